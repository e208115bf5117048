//! Lock results without poison. A panic while a lock is held is a bug, and the panic guards
//! confine it to one request or task; the data under the lock is still whole (every update is
//! made in one step), so later callers go on with it instead of panicking in turn.

use std::sync::{Condvar, LockResult, Mutex, PoisonError};
use std::time::Instant;

pub trait Recover<T> {
    /// The guard (or value), poisoned or not.
    fn recover(self) -> T;
}

impl<T> Recover<T> for LockResult<T> {
    fn recover(self) -> T {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

/// A count of things under way (threads serving long requests), bounded, that can be waited
/// on until it is zero.
#[derive(Default)]
pub struct Gauge {
    n: Mutex<usize>,
    zero: Condvar,
}

impl Gauge {
    /// Counts one more unless `max` are under way already; false then.
    pub fn try_add(&self, max: usize) -> bool {
        let mut n = self.n.lock().recover();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn done(&self) {
        let mut n = self.n.lock().recover();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.zero.notify_all();
        }
    }

    /// Counts one more, without a bound, until the guard is dropped (also by a panic).
    pub fn enter(self: &std::sync::Arc<Self>) -> GaugeGuard {
        *self.n.lock().recover() += 1;
        GaugeGuard(std::sync::Arc::clone(self))
    }

    pub fn get(&self) -> usize {
        *self.n.lock().recover()
    }

    /// Waits until the count is zero or `deadline` passes; true when it is zero.
    pub fn wait_zero(&self, deadline: Instant) -> bool {
        let mut n = self.n.lock().recover();
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self.zero.wait_timeout(n, left).recover().0;
        }
        true
    }
}

/// One count of a [`Gauge`], given back when dropped.
pub struct GaugeGuard(std::sync::Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_gauge_is_bounded_and_waited_on() {
        let g = Arc::new(Gauge::default());
        assert!(g.try_add(2) && g.try_add(2));
        assert!(!g.try_add(2), "a third over a bound of two");
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(!g.wait_zero(soon), "two are under way");
        let g2 = Arc::clone(&g);
        let t = std::thread::spawn(move || {
            g2.done();
            g2.done();
        });
        assert!(g.wait_zero(Instant::now() + std::time::Duration::from_secs(10)));
        t.join().unwrap();
        assert_eq!(g.get(), 0);
        let guard = g.enter();
        assert_eq!(g.get(), 1);
        drop(guard);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Arc::new(Mutex::new(7));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*m.lock().recover(), 7);
    }
}
