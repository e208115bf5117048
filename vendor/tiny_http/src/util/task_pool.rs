use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// Name given to the threads of the pool.
pub const THREAD_NAME: &str = "http-conn";
/// Stack size of the threads of the pool. Connection threads only parse request heads and
/// shuffle buffers, so a small stack keeps many idle connections cheap.
pub const THREAD_STACK_SIZE: usize = 256 * 1024;
/// Idle threads above `MIN_THREADS` exit after this long without work.
const IDLE_TIMEOUT: Duration = Duration::from_millis(5000);
/// Minimum number of threads kept alive.
const MIN_THREADS: usize = 4;

type Task = Box<dyn FnOnce() + Send>;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are busy. Work goes to the
/// thread that became idle last (a stack, not a queue): under a trickle of connections the
/// same few threads take them all, and the others reach their idle timeout and exit. With a
/// queue (upstream's shared condition variable) every idle thread got work in turn, so none
/// ever timed out and the pool never shrank while requests kept coming.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Sharing {
    /// The idle threads' slots, the most recently idle last.
    idle: Mutex<Idle>,
    /// Threads alive.
    threads: AtomicUsize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    slots: Vec<Arc<Slot>>,
    closing: bool,
}

/// Where one idle thread waits for its next task.
#[derive(Default)]
struct Slot {
    task: Mutex<Option<Task>>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskPool {
    pub fn new() -> TaskPool {
        Self::with_idle_timeout(IDLE_TIMEOUT)
    }

    pub(crate) fn with_idle_timeout(idle_timeout: Duration) -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                idle: Mutex::new(Idle::default()),
                threads: AtomicUsize::new(0),
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
        self.sharing.threads.load(Ordering::Acquire)
    }

    /// Executes a function in a thread: the one idle the shortest time, or a new one.
    ///
    /// If a thread cannot be spawned (resource exhaustion), the task is dropped without being
    /// run and an error is returned.
    pub fn spawn(&self, code: Task) -> std::io::Result<()> {
        {
            // The task is put in the slot under the pool's lock: a thread that timed out
            // takes that lock before it decides to leave, so it sees the task if it has one.
            let mut idle = lock(&self.sharing.idle);
            if let Some(slot) = idle.slots.pop() {
                *lock(&slot.task) = Some(code);
                slot.ready.notify_one();
                return Ok(());
            }
        }
        self.add_thread(Some(code))
    }

    fn add_thread(&self, initial: Option<Task>) -> std::io::Result<()> {
        let sharing = Arc::clone(&self.sharing);
        sharing.threads.fetch_add(1, Ordering::AcqRel);
        let res = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .stack_size(THREAD_STACK_SIZE)
            .spawn(move || {
                let slot = Arc::new(Slot::default());
                let mut next = match initial {
                    Some(task) => Some(task),
                    None => sharing.wait_for_work(&slot),
                };
                while let Some(task) = next {
                    // A panicking task must not take the thread (and its bookkeeping) down.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                    next = sharing.wait_for_work(&slot);
                }
                // `wait_for_work` counted this thread out when it returned `None`.
            });
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                self.sharing.threads.fetch_sub(1, Ordering::AcqRel);
                log::error!("tiny_http: cannot spawn connection thread: {}", e);
                Err(e)
            }
        }
    }
}

impl Sharing {
    /// Puts the thread on the idle stack and waits for a task; `None` when it should exit
    /// (idle too long above the minimum, or the pool is gone), and then it is counted out.
    fn wait_for_work(&self, slot: &Arc<Slot>) -> Option<Task> {
        {
            let mut idle = lock(&self.idle);
            if idle.closing {
                self.threads.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            idle.slots.push(Arc::clone(slot));
        }
        loop {
            {
                let mut task = lock(&slot.task);
                if let Some(t) = task.take() {
                    return Some(t);
                }
                if self.threads.load(Ordering::Acquire) > MIN_THREADS {
                    task = slot
                        .ready
                        .wait_timeout(task, self.idle_timeout)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                } else {
                    task = slot.ready.wait(task).unwrap_or_else(|p| p.into_inner());
                }
                if let Some(t) = task.take() {
                    return Some(t);
                }
            }
            // Woken without a task: a timeout, the pool closing, or a spurious wake-up.
            let mut idle = lock(&self.idle);
            if let Some(t) = lock(&slot.task).take() {
                return Some(t);
            }
            // Decided and counted under the pool's lock, so threads timing out together
            // cannot all leave and go below the minimum.
            if idle.closing || self.threads.load(Ordering::Acquire) > MIN_THREADS {
                idle.slots.retain(|s| !Arc::ptr_eq(s, slot));
                self.threads.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        let mut idle = lock(&self.sharing.idle);
        idle.closing = true;
        for slot in idle.slots.drain(..) {
            let _held = lock(&slot.task);
            slot.ready.notify_one();
        }
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

    /// A trickle of short connections, one at a time, keeps one thread busy now and then; the
    /// other idle threads reach their timeout. (Handing work to the longest-idle thread, as
    /// upstream did, woke each of them in turn and none ever expired.)
    #[test]
    fn idle_threads_expire_under_a_trickle_of_work() {
        let timeout = Duration::from_millis(1000);
        let pool = TaskPool::with_idle_timeout(timeout);
        let (tx, rx) = mpsc::channel();
        let n = 16;
        for _ in 0..n {
            let tx = tx.clone();
            pool.spawn(Box::new(move || {
                thread::sleep(Duration::from_millis(200));
                tx.send(()).unwrap();
            }))
            .unwrap();
        }
        for _ in 0..n {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert!(pool.threads() >= n);
        // One tiny task every 20 ms for four idle timeouts: under a FIFO hand-out each of the
        // 16 threads would get one every ~320 ms, well within its timeout.
        let start = Instant::now();
        while start.elapsed() < 4 * timeout {
            let tx = tx.clone();
            pool.spawn(Box::new(move || tx.send(()).unwrap())).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            pool.threads() <= MIN_THREADS + 1,
            "{} threads left",
            pool.threads()
        );
    }

    #[test]
    fn minimum_threads_wait_and_take_work() {
        let pool = TaskPool::with_idle_timeout(Duration::from_millis(50));
        thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.threads(), MIN_THREADS);
        let (tx, rx) = mpsc::channel();
        for _ in 0..MIN_THREADS {
            let tx = tx.clone();
            pool.spawn(Box::new(move || tx.send(thread::current().id()).unwrap()))
                .unwrap();
        }
        for _ in 0..MIN_THREADS {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert!(pool.threads() >= MIN_THREADS);
    }
}
