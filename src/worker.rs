//! One shape for every long-lived thread of the agent: its name, a way to ask it to stop, and
//! its join handle(s). [`Workers`] stops them in the reverse of their start order, so a part
//! is stopped only after everything started after it (and so possibly using it).

use std::thread::JoinHandle;

pub struct Worker {
    name: &'static str,
    /// Asks the thread(s) to end (drops a channel, sends a message, unblocks a socket); must
    /// not block.
    stop: Box<dyn FnOnce() + Send>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    pub fn new(name: &'static str, stop: impl FnOnce() + Send + 'static, threads: Vec<JoinHandle<()>>) -> Worker {
        Worker { name, stop: Box::new(stop), threads }
    }

    /// Asks the threads to stop and waits for them.
    pub fn stop(self) {
        (self.stop)();
        for t in self.threads {
            if t.join().is_err() {
                log::error!("the {} thread panicked (a bug; the panic message is above)", self.name);
            }
        }
        log::debug!("{} stopped", self.name);
    }
}

/// The agent's workers, in start order.
#[derive(Default)]
pub struct Workers(Vec<Worker>);

impl Workers {
    pub fn push(&mut self, w: Worker) {
        self.0.push(w);
    }

    /// Stops every worker, the last started first.
    pub fn stop_all(self) {
        for w in self.0.into_iter().rev() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn workers_stop_in_reverse_order_and_are_joined() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut ws = Workers::default();
        for name in ["first", "second", "third"] {
            let (tx, rx) = crossbeam_channel::bounded::<()>(0);
            let o = Arc::clone(&order);
            let t = std::thread::spawn(move || {
                let _ = rx.recv(); // until the sender is dropped
                o.lock().unwrap().push(name);
            });
            ws.push(Worker::new(name, move || drop(tx), vec![t]));
        }
        ws.stop_all();
        assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
    }
}
