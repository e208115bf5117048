//! Lock results without poison. A panic while a lock is held is a bug, and the panic guards
//! confine it to one request or task; the data under the lock is still whole (every update is
//! made in one step), so later callers go on with it instead of panicking in turn.

use std::sync::{LockResult, PoisonError};

pub trait Recover<T> {
    /// The guard (or value), poisoned or not.
    fn recover(self) -> T;
}

impl<T> Recover<T> for LockResult<T> {
    fn recover(self) -> T {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
