use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Name given to the threads of the pool.
pub const THREAD_NAME: &str = "http-conn";
/// Stack size of the threads of the pool. Connection threads only parse request heads and
/// shuffle buffers, so a small stack keeps many idle connections cheap.
pub const THREAD_STACK_SIZE: usize = 256 * 1024;
/// Idle threads above `MIN_THREADS` exit after this long without work.
const IDLE_TIMEOUT: Duration = Duration::from_millis(5000);

type Task = Box<dyn FnOnce() + Send>;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread (above `MIN_THREADS`) will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Task>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,

    idle_timeout: Duration,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::AcqRel);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TaskPool {
    pub fn new() -> TaskPool {
        Self::with_idle_timeout(IDLE_TIMEOUT)
    }

    pub(crate) fn with_idle_timeout(idle_timeout: Duration) -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
                idle_timeout,
            }),
        };

        for _ in 0..MIN_THREADS {
            let _ = pool.add_thread(None);
        }

        pool
    }

    /// Number of threads currently alive in the pool.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.sharing.active_tasks.load(Ordering::Acquire)
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    ///
    /// If a thread cannot be spawned (resource exhaustion), the task is dropped without being
    /// run and an error is returned.
    pub fn spawn(&self, code: Task) -> std::io::Result<()> {
        let mut queue = match self.sharing.todo.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };

        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {
            drop(queue);
            self.add_thread(Some(code))
        } else {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
            Ok(())
        }
    }

    fn add_thread(&self, initial_fn: Option<Task>) -> std::io::Result<()> {
        let sharing = self.sharing.clone();

        let res = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .stack_size(THREAD_STACK_SIZE)
            .spawn(move || {
                let sharing = sharing;
                let _active_guard = Registration::new(&sharing.active_tasks);

                if let Some(f) = initial_fn {
                    f();
                }

                loop {
                    let task: Task = {
                        let mut todo = match sharing.todo.lock() {
                            Ok(t) => t,
                            Err(p) => p.into_inner(),
                        };

                        let task;
                        loop {
                            if let Some(poped_task) = todo.pop_front() {
                                task = poped_task;
                                break;
                            }
                            let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                            let received =
                                if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                    todo = match sharing.condvar.wait(todo) {
                                        Ok(t) => t,
                                        Err(p) => p.into_inner(),
                                    };
                                    true
                                } else {
                                    let (new_lock, timed_out) = match sharing
                                        .condvar
                                        .wait_timeout(todo, sharing.idle_timeout)
                                    {
                                        Ok((l, r)) => (l, r.timed_out()),
                                        Err(p) => {
                                            let (l, r) = p.into_inner();
                                            (l, r.timed_out())
                                        }
                                    };
                                    todo = new_lock;
                                    !timed_out
                                };

                            if !received
                                && todo.is_empty()
                                && sharing.active_tasks.load(Ordering::Acquire) > MIN_THREADS
                            {
                                // Leave the pool. The count is decremented while the lock is
                                // held, so that threads timing out together cannot all decide
                                // to leave and go below MIN_THREADS.
                                sharing.active_tasks.fetch_sub(1, Ordering::AcqRel);
                                std::mem::forget(_active_guard);
                                return;
                            }
                        }

                        task
                    };

                    // a panicking task must not take the worker (and its bookkeeping) down
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                }
            });
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                log::error!("tiny_http: cannot spawn connection thread: {}", e);
                Err(e)
            }
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn threads_are_named_and_idle_ones_expire() {
        let pool = TaskPool::with_idle_timeout(Duration::from_millis(200));
        let (tx, rx) = mpsc::channel();
        let n = 20;
        for _ in 0..n {
            let tx = tx.clone();
            pool.spawn(Box::new(move || {
                let name = thread::current().name().map(|s| s.to_owned());
                thread::sleep(Duration::from_millis(100));
                tx.send(name).unwrap();
            }))
            .unwrap();
        }
        for _ in 0..n {
            let name = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(name.as_deref(), Some(THREAD_NAME));
        }
        assert!(pool.threads() >= n);
        let start = Instant::now();
        while pool.threads() > MIN_THREADS && start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pool.threads(), MIN_THREADS);
    }
}
