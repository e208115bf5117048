//! The registry: every task the agent knows, the running count, admission, ids, and history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::events::EventTx;
use crate::metrics::{self, Metrics};
use crate::monitor::Monitor;
use crate::protocol::{TaskRecord, TaskStatus};
use crate::store::Store;
use crate::sync::Recover;
use crate::task_user::TaskUser;
use crate::tasks::mask::Secrets;
use crate::tasks::pool::Pool;
use crate::tasks::task::{Task, TaskSpec};
use crate::tasks::timer::Timer;

/// Why a task was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    ShuttingDown,
    MaxTasks { running: usize, max: usize },
    Cpu { usage: f64, limit: u8 },
    Memory { usage: f64, limit: u8 },
}

/// The settings the registry and runner need, taken from [`Config`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_tasks: usize,
    pub max_cpu_percent: u8,
    pub max_memory_percent: u8,
    pub task_timeout: Option<Duration>,
    pub history: usize,
    pub max_output_bytes: usize,
    /// The agent's own working directory, the default `cwd` of a task.
    pub default_cwd: String,
    /// What every task's output is masked for: the cluster secret.
    pub secrets: Arc<Secrets>,
    /// `REDACT_VARS`: `env` names whose values are secret.
    pub redact_vars: Vec<String>,
    /// `TASK_USER`: whom tasks run as.
    pub task_user: Option<TaskUser>,
}

impl Limits {
    pub fn from_config(cfg: &Config) -> Limits {
        Limits {
            max_tasks: cfg.max_concurrent_tasks,
            max_cpu_percent: cfg.max_cpu_percent,
            max_memory_percent: cfg.max_memory_percent,
            task_timeout: cfg.task_timeout,
            history: cfg.task_history,
            max_output_bytes: cfg.max_output_bytes,
            default_cwd: default_cwd(cfg),
            secrets: Secrets::shared([cfg.secret.as_bytes()]),
            redact_vars: cfg.redact_vars.clone(),
            task_user: cfg.task_user.clone(),
        }
    }
}

/// A task's `cwd` when it names none: the agent's own, or with a `TASK_USER` that user's home
/// (the agent's directory is usually closed to it).
fn default_cwd(cfg: &Config) -> String {
    match &cfg.task_user {
        Some(user) => user.home.display().to_string(),
        None => std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|_| "/".into()),
    }
}

struct Inner {
    tasks: BTreeMap<u64, Arc<Task>>,
    /// Ids of finished tasks in the order their ends were recorded: the eviction order (a
    /// long build outlived by many short tasks is not dropped the moment it ends).
    finished: VecDeque<u64>,
    next_id: u64,
    running: usize,
    /// Tasks admitted whose end is not yet fully recorded (persisted, `completed` sent).
    /// A slot frees before that; shutdown waits for this to be empty.
    unsettled: BTreeSet<u64>,
    accepting: bool,
}

pub struct Registry {
    pub(super) limits: Limits,
    pub(super) store: Store,
    pub(super) timer: Timer,
    pub(super) events: EventTx,
    pub(super) monitor: Arc<Monitor>,
    pub(super) metrics: Arc<Metrics>,
    /// Threads for the tasks' waiters and pipe readers.
    pub(super) pool: Pool,
    inner: Mutex<Inner>,
    /// Signalled whenever the running count drops (shutdown waits on it).
    idle: Condvar,
    /// Held (shared) from a task's spawn until its pid is recorded; the PID-1 reaper takes it
    /// exclusively to list the tasks' pids, so no task's child is ever taken for an orphan.
    pub(super) spawn_gate: RwLock<()>,
}

impl Registry {
    pub fn new(
        limits: Limits,
        store: Store,
        timer: Timer,
        events: EventTx,
        monitor: Arc<Monitor>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            limits,
            store,
            timer,
            events,
            monitor,
            metrics,
            pool: Pool::new(128 * 1024),
            inner: Mutex::new(Inner {
                tasks: BTreeMap::new(),
                finished: VecDeque::new(),
                next_id: 1,
                running: 0,
                unsettled: BTreeSet::new(),
                accepting: true,
            }),
            idle: Condvar::new(),
            spawn_gate: RwLock::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().recover()
    }

    /// Loads finished tasks from history; ids continue above the highest one seen.
    /// Records still marked running are returned for recovery (their agent died).
    pub fn load_history(&self, mut records: Vec<TaskRecord>) {
        // Oldest end first: the order they are evicted in.
        records.sort_by_key(|r| (r.end.as_ref().map_or(0, |e| e.completed_at), r.id));
        let mut evict = Vec::new();
        {
            let mut inner = self.lock();
            inner.next_id = inner.next_id.max(self.store.load_next_id());
            for rec in records {
                inner.next_id = inner.next_id.max(rec.id + 1);
                let id = rec.id;
                let task = Task::from_record(
                    rec,
                    self.store.paths(id),
                    self.limits.max_output_bytes,
                    self.events.clone(),
                    true,
                );
                inner.tasks.insert(id, Arc::new(task));
                inner.finished.push_back(id);
            }
            Self::evict_over_history(&mut inner, self.limits.history, &mut evict);
        }
        for id in evict {
            self.store.remove_files(id);
        }
    }

    /// The id the next task will get.
    pub fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    /// Ids go on above `id`, which was given out (a file of it was found).
    pub fn given_out(&self, id: u64) {
        let mut inner = self.lock();
        inner.next_id = inner.next_id.max(id.saturating_add(1));
    }

    /// Whether the agent knows task `id`.
    pub fn knows(&self, id: u64) -> bool {
        self.lock().tasks.contains_key(&id)
    }

    /// Admits a task: checks shutdown, the slot count and the node's load, then takes a slot
    /// and an id. Only [`crate::tasks::launch`] calls it, and starts what it admits.
    pub(super) fn admit(&self, spec: TaskSpec) -> Result<Arc<Task>, Rejection> {
        let mut inner = self.lock();
        if !inner.accepting {
            return Err(Rejection::ShuttingDown);
        }
        if inner.running >= self.limits.max_tasks {
            return Err(Rejection::MaxTasks { running: inner.running, max: self.limits.max_tasks });
        }
        let snap = self.monitor.snapshot();
        if snap.cpu_percent > f64::from(self.limits.max_cpu_percent) {
            return Err(Rejection::Cpu { usage: snap.cpu_percent, limit: self.limits.max_cpu_percent });
        }
        let mem = snap.memory_percent();
        if mem > f64::from(self.limits.max_memory_percent) {
            return Err(Rejection::Memory { usage: mem, limit: self.limits.max_memory_percent });
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.running += 1;
        inner.unsettled.insert(id);
        self.monitor.tasks_running(1);
        let (paths, events) = (self.store.paths(id), self.events.clone());
        let task = Arc::new(Task::new(id, spec, paths, self.limits.max_output_bytes, events, &self.limits.secrets));
        inner.tasks.insert(id, Arc::clone(&task));
        metrics::inc(&self.metrics.tasks_started);
        Ok(task)
    }

    /// Frees the task's slot (once, whatever calls it twice).
    pub fn release(&self, task: &Task) {
        if !task.take_slot() {
            return;
        }
        let mut inner = self.lock();
        inner.running -= 1;
        self.monitor.tasks_running(-1);
    }

    /// Rewrites the journal when it has grown well past what is kept. Called by a task's
    /// thread after its end is recorded and answered, so nobody waits for it.
    pub fn compact_if_needed(&self) {
        if self.store.wants_compaction(self.limits.history + self.limits.max_tasks) {
            self.compact();
        }
    }

    /// Rewrites the journal with the records of the tasks kept now.
    pub fn compact(&self) {
        let next_id = self.next_id();
        let result = self.store.rewrite(next_id, |write| {
            let tasks: Vec<Arc<Task>> = self.lock().tasks.values().cloned().collect();
            tasks.iter().try_for_each(|t| write(&t.record()))
        });
        if let Err(e) = result {
            log::warn!("cannot rewrite the task journal: {e}");
        }
    }

    fn evict_over_history(inner: &mut Inner, history: usize, evicted: &mut Vec<u64>) {
        while inner.finished.len() > history {
            let oldest = inner.finished.pop_front().expect("non-empty: len > history >= 1");
            inner.tasks.remove(&oldest);
            evicted.push(oldest);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Task>> {
        self.lock().tasks.get(&id).cloned()
    }

    /// Tasks newest first, optionally only those with `status`, at most `limit`.
    pub fn list(&self, status: Option<TaskStatus>, limit: Option<usize>) -> Vec<Arc<Task>> {
        let limit = limit.unwrap_or(usize::MAX);
        match status {
            // No filter: take the newest under the lock, without touching the others.
            None => self.lock().tasks.values().rev().take(limit).cloned().collect(),
            // A task's status sits behind its own lock: never take it under the registry's.
            Some(s) => {
                let all: Vec<Arc<Task>> = self.lock().tasks.values().rev().cloned().collect();
                all.into_iter().filter(|t| t.status() == s).take(limit).collect()
            }
        }
    }

    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Tasks admitted and not yet settled (running, or recording their end).
    pub fn running_tasks(&self) -> Vec<Arc<Task>> {
        let inner = self.lock();
        inner.unsettled.iter().filter_map(|id| inner.tasks.get(id)).cloned().collect()
    }

    /// Stops admitting tasks (shutdown): later `admit`s get [`Rejection::ShuttingDown`].
    pub fn stop_accepting(&self) {
        self.lock().accepting = false;
    }

    /// The task's end is recorded everywhere (its record written, `completed` sent).
    /// It joins the history now (not when its slot freed, so nothing deletes its log while
    /// its end is being recorded and answered), evicting the longest-finished beyond
    /// `TASK_HISTORY`.
    pub fn settled(&self, task: &Task) {
        let mut evict = Vec::new();
        {
            let mut inner = self.lock();
            inner.unsettled.remove(&task.id);
            inner.finished.push_back(task.id);
            Self::evict_over_history(&mut inner, self.limits.history, &mut evict);
        }
        self.idle.notify_all();
        for id in evict {
            self.store.remove_files(id);
        }
    }

    /// Waits until every task has ended and its end is recorded, or `deadline` passes;
    /// true when all have.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut inner = self.lock();
        while !inner.unsettled.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            inner = self.idle.wait_timeout(inner, left).recover().0;
        }
        true
    }

    /// The most tasks run at once (`MAX_CONCURRENT_TASKS`).
    pub fn max_tasks(&self) -> usize {
        self.limits.max_tasks
    }

    /// A task's `cwd` when it names none: the agent's own working directory (with a
    /// `TASK_USER`, that user's home).
    pub fn default_cwd(&self) -> &str {
        &self.limits.default_cwd
    }

    /// `REDACT_VARS`: the `env` names whose values are secret.
    pub fn redact_vars(&self) -> &[String] {
        &self.limits.redact_vars
    }

    /// Holds off every task's spawn until the guard is dropped: a spawn in progress finishes
    /// first, and none starts meanwhile, so every task's child has its pid recorded (the
    /// PID-1 reaper takes this before it lists the tasks' pids).
    pub fn pause_spawns(&self) -> RwLockWriteGuard<'_, ()> {
        self.spawn_gate.write().recover()
    }

    /// Path of a task's output log.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.store.log_path(id)
    }
}
