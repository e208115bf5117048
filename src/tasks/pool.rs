//! Threads for tasks, reused: each task still gets its own waiter thread and one reader
//! thread per pipe, but those threads are taken from a pool of idle ones when there are any.
//! Creating and tearing down three threads per task was a large part of the agent's cost per
//! task (stack, guard pages, signal stack, name). An idle thread exits after [`IDLE_FOR`].

use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// How long an idle thread waits for work before it exits.
pub const IDLE_FOR: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// A named piece of work: the thread takes `name` while it runs it (as `ps -L` shows).
pub struct Work {
    pub name: String,
    pub job: Job,
}

#[derive(Clone)]
pub struct Pool {
    /// One sender per idle thread; taking one hands that thread the next job.
    idle: Arc<Mutex<Vec<Sender<Work>>>>,
    stack_size: usize,
}

impl Pool {
    pub fn new(stack_size: usize) -> Pool {
        Pool { idle: Arc::new(Mutex::new(Vec::new())), stack_size }
    }

    /// Runs `job` on an idle thread, or on a new one.
    pub fn spawn(&self, name: String, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut work = Work { name, job: Box::new(job) };
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(tx) = idle else { break };
            match tx.send(work) {
                Ok(()) => return Ok(()),
                // That thread has just exited: try another.
                Err(e) => work = e.0,
            }
        }
        let (tx, rx) = crossbeam_channel::bounded::<Work>(1);
        let idle = Arc::clone(&self.idle);
        std::thread::Builder::new()
            .name("task-pool".into())
            .stack_size(self.stack_size)
            .spawn(move || worker(work, &tx, &rx, &idle))?;
        Ok(())
    }
}

fn worker(first: Work, tx: &Sender<Work>, rx: &Receiver<Work>, idle: &Mutex<Vec<Sender<Work>>>) {
    set_name(&first.name);
    (first.job)();
    loop {
        idle.lock().unwrap_or_else(|p| p.into_inner()).push(tx.clone());
        let work = match rx.recv_timeout(IDLE_FOR) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => {
                let mut list = idle.lock().unwrap_or_else(|p| p.into_inner());
                match list.iter().position(|s| s.same_channel(tx)) {
                    Some(i) => {
                        list.swap_remove(i);
                        return;
                    }
                    // Someone took this thread just now: its job is on the way.
                    None => {
                        drop(list);
                        match rx.recv() {
                            Ok(w) => w,
                            Err(_) => return,
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        set_name(&work.name);
        (work.job)();
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
}
