//! Where log lines go: the `log-writer` thread writes them to stdout, so a reader of stdout
//! that stalls (a paused pager, a full pipe, a stuck journald) never blocks a request, a task
//! or the shutdown. A thread that logs appends its line to a buffer and goes on; the writer is
//! woken only when the buffer stops being empty, waits 20 ms for more, and writes everything
//! queued in one go. Past
//! [`MAX_QUEUED`] bytes, lines are dropped and counted, and the count is written once stdout
//! takes data again.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::sync::Recover;

/// Bytes of log lines held while stdout is not taking them.
pub const MAX_QUEUED: usize = 1 << 20;
/// How long the writer, once woken, waits for more lines before writing.
const COALESCE: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    queued: Vec<u8>,
    dropped: u64,
    /// The writer is waiting for lines (so a new line must wake it).
    idle: bool,
    /// The writer holds lines it has taken but not yet written.
    writing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().recover()
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The `Write` end handed to env_logger (it writes each record in one call).
pub struct Sink(Arc<Shared>);

impl Write for Sink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut st = self.0.lock();
        if st.queued.len() + line.len() > MAX_QUEUED {
            st.dropped += 1;
        } else {
            st.queued.extend_from_slice(line);
        }
        if st.idle {
            st.idle = false;
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts the `log-writer` thread and returns the sink to log into; lines go to `out`. Once
/// per process: a second call gets an error (two writers would reorder lines).
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<Sink> {
    let fresh = Arc::new(Shared::default());
    if SHARED.set(Arc::clone(&fresh)).is_err() {
        return Err(std::io::Error::other("the log writer is already started"));
    }
    let writer = Arc::clone(&fresh);
    std::thread::Builder::new().name("log-writer".into()).stack_size(64 * 1024).spawn(move || run(&writer, out))?;
    Ok(Sink(fresh))
}

fn run(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let dropped = {
            let mut st = shared.lock();
            st.writing = false;
            if st.queued.is_empty() {
                shared.drained.notify_all();
                st.idle = true;
                st = shared.wake.wait_while(st, |s| s.queued.is_empty() && s.dropped == 0).recover();
                // Let the lines of the next moments join this one: under load the writer then
                // wakes once per COALESCE, not once per line.
                drop(st);
                std::thread::sleep(COALESCE);
                st = shared.lock();
            }
            std::mem::swap(&mut batch, &mut st.queued);
            st.writing = true;
            std::mem::take(&mut st.dropped)
        };
        // Errors (stdout closed) are not reported: there is nowhere left to report them.
        // The lines dropped came after those queued: the notice follows them.
        let _ = out.write_all(&batch);
        if dropped > 0 {
            let _ = writeln!(out, "[log] {dropped} log line(s) dropped: stdout was not being read");
        }
        let _ = out.flush();
        batch.clear();
        if batch.capacity() > 64 * 1024 {
            batch = Vec::new();
        }
    }
}

/// Waits up to `timeout` until every line logged so far has been written (at exit).
pub fn flush(timeout: Duration) {
    let Some(shared) = SHARED.get() else { return };
    let deadline = Instant::now() + timeout;
    let mut st = shared.lock();
    while !st.queued.is_empty() || st.writing {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        st = shared.drained.wait_timeout(st, left).recover().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A writer that blocks while `stalled` is set, then records what it gets.
    #[derive(Clone)]
    struct Gate(Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while self.0.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stdout_never_blocks_the_logger_and_drops_are_counted() {
        let gate = Gate(Arc::new(AtomicBool::new(true)), Arc::default());
        let mut sink = start(gate.clone()).unwrap();
        let line = [b'x'; 99].iter().copied().chain(*b"\n").collect::<Vec<u8>>();
        let started = Instant::now();
        // Far more than MAX_QUEUED, while the writer is stuck.
        for _ in 0..(3 * MAX_QUEUED / line.len()) {
            sink.write_all(&line).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "logging blocked on a stalled stdout");
        gate.0.store(false, Ordering::SeqCst);
        flush(Duration::from_secs(20));
        let out = gate.1.lock().unwrap().clone();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("log line(s) dropped: stdout was not being read"), "no drop count");
        let kept = text.lines().filter(|l| l.len() == 99).count();
        // What the writer had taken before it stalled, and a full queue.
        assert!(kept > 0 && kept <= 2 * (MAX_QUEUED / line.len() + 1), "{kept} lines kept");
        // Once stdout drains, new lines get through again.
        sink.write_all(b"after\n").unwrap();
        flush(Duration::from_secs(20));
        assert!(gate.1.lock().unwrap().ends_with(b"after\n"));
    }
}
