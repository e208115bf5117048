//! Threads for tasks, reused: each task still gets its own waiter thread and one reader
//! thread per pipe, but those threads are taken from a pool of idle ones when there are any.
//! Creating and tearing down three threads per task was a large part of the agent's cost per
//! task (stack, guard pages, signal stack, name). An idle thread exits after [`IDLE_FOR`].

use std::ffi::CString;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::Recover;

/// How long an idle thread waits for work before it exits.
pub const IDLE_FOR: Duration = Duration::from_secs(10);

type Thunk = Box<dyn FnOnce() + Send>;

/// A named piece of work: the thread takes `name` while it runs it (as `ps -L` shows; an idle
/// thread keeps its last job's name, which saves a syscall per job).
pub struct Work {
    pub name: String,
    pub job: Thunk,
    /// Run after `job` if it panics (a bug): to end what the job owned.
    pub on_panic: Option<Thunk>,
}

/// Where a job is handed to one idle thread. A mutex and condition variable rather than a
/// channel: channels spin and yield before they sleep, which on a 2-core node costs more than
/// the handoff.
#[derive(Default)]
struct Slot {
    work: Mutex<Option<Work>>,
    ready: Condvar,
}

#[derive(Clone)]
pub struct Pool {
    /// The slots of idle threads; taking one hands that thread the next job.
    idle: Arc<Mutex<Vec<Arc<Slot>>>>,
    stack_size: usize,
}

impl Pool {
    pub fn new(stack_size: usize) -> Pool {
        Pool { idle: Arc::new(Mutex::new(Vec::new())), stack_size }
    }

    /// Runs `job` on an idle thread, or on a new one.
    pub fn spawn(&self, name: String, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        self.hand_over(Work { name, job: Box::new(job), on_panic: None })
    }

    /// [`Pool::spawn`], and `on_panic` after `job` if it panics (a bug): what the job was to
    /// end, such as a task, is ended by it rather than left waiting forever.
    pub fn spawn_or_else(
        &self,
        name: String,
        job: impl FnOnce() + Send + 'static,
        on_panic: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        self.hand_over(Work { name, job: Box::new(job), on_panic: Some(Box::new(on_panic)) })
    }

    fn hand_over(&self, work: Work) -> std::io::Result<()> {
        // A thread leaves the idle list only under its lock, before it exits: a slot taken
        // from the list always has a thread waiting on it.
        // (A statement of its own: the list's lock must be released before the slot's is
        // taken, the reverse of the order an idle thread leaving takes them in.)
        let taken = lock(&self.idle).pop();
        if let Some(slot) = taken {
            *lock(&slot.work) = Some(work);
            slot.ready.notify_one();
            return Ok(());
        }
        let idle = Arc::clone(&self.idle);
        std::thread::Builder::new()
            .name("task-pool".into())
            .stack_size(self.stack_size)
            .spawn(move || worker(work, &idle))?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().recover()
}

fn worker(first: Work, idle: &Mutex<Vec<Arc<Slot>>>) {
    let slot = Arc::new(Slot::default());
    let mut work = first;
    loop {
        set_name(&work.name);
        // A panic (a bug) ends its job, not the thread; the default hook has printed it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work.job)).is_err() {
            log::error!("{} panicked (a bug; the panic message is above)", work.name);
            if let Some(on_panic) = work.on_panic {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(on_panic)).is_err() {
                    log::error!("{}: what ends it after a panic panicked too", work.name);
                }
            }
        }
        lock(idle).push(Arc::clone(&slot));
        let deadline = Instant::now() + IDLE_FOR;
        let mut w = lock(&slot.work);
        loop {
            if let Some(next) = w.take() {
                work = next;
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Leave the idle list, unless someone has just taken this slot: then its job
                // is on the way, and this thread stays for it.
                let mut list = lock(idle);
                if let Some(i) = list.iter().position(|s| Arc::ptr_eq(s, &slot)) {
                    list.swap_remove(i);
                    return;
                }
                drop(list);
                w = slot.ready.wait_while(w, |w| w.is_none()).recover();
                continue;
            }
            w = slot.ready.wait_timeout(w, left).recover().0;
        }
    }
}

fn set_name(name: &str) {
    #[cfg(target_os = "linux")]
    if let Ok(c) = CString::new(name.chars().take(15).collect::<String>()) {
        let _ = rustix::thread::set_name(&c);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_and_reuses_threads() {
        let pool = Pool::new(64 * 1024);
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut threads = std::collections::HashSet::new();
        for i in 0..50 {
            let (done, tx) = (Arc::clone(&done), tx.clone());
            pool.spawn(format!("job-{i}"), move || {
                done.fetch_add(1, Ordering::SeqCst);
                tx.send(std::thread::current().id()).unwrap();
            })
            .unwrap();
            // Sequential jobs: the one thread is idle again before the next.
            threads.insert(rx.recv_timeout(Duration::from_secs(5)).unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(done.load(Ordering::SeqCst), 50);
        assert!(threads.len() <= 2, "{} threads for 50 sequential jobs", threads.len());
        assert!(pool.idle.lock().unwrap().len() <= 2);
    }

    #[test]
    fn what_a_panicking_job_owned_is_ended_by_its_fallback() {
        let pool = Pool::new(256 * 1024);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (tx2, tx3) = (tx.clone(), tx.clone());
        pool.spawn_or_else("boom".into(), || panic!("a bug in a job"), move || tx2.send("ended").unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("ended"));
        // A job that returns does not run it.
        pool.spawn_or_else("fine".into(), move || tx.send("done").unwrap(), move || tx3.send("ended").unwrap())
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("done"));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn a_panicking_job_leaves_its_thread_working() {
        let pool = Pool::new(256 * 1024);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx2 = tx.clone();
        pool.spawn("boom".into(), move || {
            tx2.send(std::thread::current().id()).unwrap();
            panic!("a bug in a job");
        })
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The thread goes back to the idle list and takes the next job.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        pool.spawn("next".into(), move || tx.send(std::thread::current().id()).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), first);
    }
}
