//! A reader thread per pipe: reads large blocks so a chatty task never blocks on a full pipe,
//! and cuts them at line ends, so many lines travel in one chunk under load and no line is
//! split between chunks, except a line longer than [`MAX_CARRY`] and a partial line after
//! which the task goes quiet for [`IDLE_FLUSH`] (a prompt, a progress bar, the last line).

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use std::sync::Arc;

use crate::events::Stream;
use crate::tasks::mask::Masker;
use crate::tasks::pool::Pool;
use crate::tasks::task::Task;

/// Bytes read from a pipe at once.
pub const READ_BLOCK: usize = 64 * 1024;
/// An unterminated line longer than this is passed on in pieces, to bound memory.
pub const MAX_CARRY: usize = 256 * 1024;
/// A partial line is passed on when no more output comes for this long: prompts and `\r`
/// progress bars show while the task waits, not at its end.
pub const IDLE_FLUSH: Duration = Duration::from_millis(100);
/// While its pipe is silent, a reader looks this often whether its task has ended without it
/// (a process that escaped the group holds the pipe open).
pub const ABANDON_CHECK: Duration = Duration::from_secs(1);

/// Reads the pipe on a thread of `pool` named `task-N-out` / `task-N-err`, and tells the task
/// when the pipe has reached its end ([`Task::reader_done`]).
pub fn spawn<R: Read + AsFd + Send + 'static>(
    pool: &Pool,
    task: Arc<Task>,
    stream: Stream,
    pipe: R,
) -> std::io::Result<()> {
    let name = format!("task-{}-{}", task.id, if stream == Stream::Stdout { "out" } else { "err" });
    let mask = task.masker();
    pool.spawn(name, move || {
        read_loop(pipe, mask, readable, |chunk| task.push_output(stream, chunk), || task.output_closed());
        task.reader_done();
    })
}

/// Whether `fd` has data (or its end, or an error) within `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    // An interruption must not end the wait early: that would flush a partial line as if
    // the task had gone quiet.
    match crate::eintr::poll(&mut fds, Some(timeout)) {
        Ok(n) => n > 0,
        Err(_) => true, // let the read report it
    }
}

/// Reads `pipe` to its end, handing `emit` chunks that end at a line end where possible.
/// `mask` masks secret values first (see [`Masker`]), so the line ends, the chunks and their
/// offsets are those of the masked output; what it holds back (the start of a value cut by
/// the read) goes out at the quiet time only when it is one or two bytes ([`Masker::quiet`]).
/// `wait(fd, timeout)` says whether the pipe has something to read within `timeout`;
/// `abandoned()` whether the task has ended without this reader (it then stops, closing its
/// end of the pipe: later output is dropped).
pub fn read_loop<R: Read + AsFd>(
    mut pipe: R,
    mut mask: Option<Masker>,
    mut wait: impl FnMut(BorrowedFd<'_>, Duration) -> bool,
    mut emit: impl FnMut(&[u8]),
    mut abandoned: impl FnMut() -> bool,
) {
    let mut buf = vec![0u8; READ_BLOCK];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let unsent = mask.as_ref().is_some_and(|m| m.unsent() > 0);
        if (!carry.is_empty() || unsent) && !wait(pipe.as_fd(), IDLE_FLUSH) {
            if let Some(m) = mask.as_mut() {
                carry.extend_from_slice(m.quiet());
            }
            // A character cut by the pause stays whole: its first bytes wait for the rest
            // (or for the end of the pipe).
            let cut = utf8_boundary(&carry);
            if cut > 0 {
                emit(&carry[..cut]);
                carry.drain(..cut);
            }
        }
        while !wait(pipe.as_fd(), ABANDON_CHECK) {
            if abandoned() {
                return;
            }
        }
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let data = match mask.as_mut() {
            Some(m) => m.feed(&buf[..n]),
            None => &buf[..n],
        };
        match data.iter().rposition(|&b| b == b'\n') {
            Some(last_nl) => {
                if carry.is_empty() {
                    emit(&data[..=last_nl]);
                } else {
                    carry.extend_from_slice(&data[..=last_nl]);
                    emit(&carry);
                    carry.clear();
                }
                carry.extend_from_slice(&data[last_nl + 1..]);
            }
            None => carry.extend_from_slice(data),
        }
        if carry.len() >= MAX_CARRY {
            // Cut at a character boundary so the lossy UTF-8 of each piece stays exact.
            let cut = utf8_boundary(&carry);
            emit(&carry[..cut]);
            carry.drain(..cut);
        }
    }
    if let Some(m) = mask.as_mut() {
        carry.extend_from_slice(m.finish());
    }
    if !carry.is_empty() {
        emit(&carry);
    }
}

/// The largest prefix length of `b` that does not end inside a UTF-8 character.
fn utf8_boundary(b: &[u8]) -> usize {
    let len = b.len();
    for back in 1..=3.min(len) {
        let byte = b[len - back];
        if byte & 0xC0 == 0xC0 {
            // A lead byte: is its character complete?
            let need = if byte >= 0xF0 {
                4
            } else if byte >= 0xE0 {
                3
            } else {
                2
            };
            return if back >= need { len } else { len - back };
        }
        if byte & 0x80 == 0 {
            return len;
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that returns the given pieces one read at a time (its fd, /dev/null, is never
    /// polled: the tests' `wait` says what the poll would).
    struct Pieces(Vec<Vec<u8>>, std::fs::File);
    impl AsFd for Pieces {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.1.as_fd()
        }
    }
    fn pieces(p: Vec<Vec<u8>>) -> Pieces {
        Pieces(p, std::fs::File::open("/dev/null").unwrap())
    }
    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let p = self.0.remove(0);
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    fn chunks(chunks_in: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read_loop(
            pieces(chunks_in.iter().map(|p| p.to_vec()).collect()),
            None,
            |_, _| true,
            |c| out.push(c.to_vec()),
            || false,
        );
        out
    }

    #[test]
    fn cuts_at_line_ends() {
        assert_eq!(
            chunks(&[b"a\nb", b"c\nd\n", b"tail"]),
            vec![b"a\n".to_vec(), b"bc\nd\n".to_vec(), b"tail".to_vec()]
        );
    }

    #[test]
    fn long_line_is_bounded_and_kept_whole() {
        let big = vec![b'x'; MAX_CARRY + 10];
        let pieces: Vec<&[u8]> = big.chunks(READ_BLOCK).collect();
        let out = chunks(&pieces);
        assert!(out.iter().all(|c| c.len() <= MAX_CARRY + READ_BLOCK));
        assert_eq!(out.concat(), big);
    }

    #[test]
    fn partial_line_is_passed_on_when_the_pipe_goes_quiet() {
        // The pipe says "nothing more for now" once, after "Password: ".
        let mut quiet = vec![false];
        let mut out = Vec::new();
        read_loop(
            pieces(vec![b"Password: ".to_vec(), b"x\n".to_vec()]),
            None,
            |_, t| t != IDLE_FLUSH || quiet.pop().unwrap_or(true),
            |c| out.push(c.to_vec()),
            || false,
        );
        assert_eq!(out, vec![b"Password: ".to_vec(), b"x\n".to_vec()]);
    }

    #[test]
    fn a_pause_inside_a_character_does_not_cut_it() {
        // `printf 'caf\303'; sleep 0.3; printf '\251 ok\n'`: quiet after the lead byte.
        let mut quiet = vec![false];
        let mut out = Vec::new();
        read_loop(
            pieces(vec![b"caf\xc3".to_vec(), b"\xa9 ok\n".to_vec()]),
            None,
            |_, t| t != IDLE_FLUSH || quiet.pop().unwrap_or(true),
            |c| out.push(c.to_vec()),
            || false,
        );
        assert_eq!(out, vec![b"caf".to_vec(), "\u{e9} ok\n".as_bytes().to_vec()]);
        assert!(out.iter().all(|c| std::str::from_utf8(c).is_ok()));
    }

    #[test]
    fn an_abandoned_reader_stops() {
        let mut out = Vec::new();
        read_loop(pieces(vec![b"never read\n".to_vec()]), None, |_, _| false, |c| out.push(c.to_vec()), || true);
        assert!(out.is_empty());
    }

    /// A value cut by a read, and by a pause after it: the quiet time passes on the partial
    /// line, but not the start of the value; a value across lines is masked whole.
    #[test]
    fn secrets_are_masked_across_reads_pauses_and_lines() {
        let secrets = crate::tasks::mask::Secrets::shared(["tok-123456", "line1\nline2"]);
        let mut quiet = vec![false];
        let mut out = Vec::new();
        read_loop(
            pieces(vec![b"a: tok-12".to_vec(), b"3456 b: line1".to_vec(), b"\nline2 c\n".to_vec()]),
            Some(Masker::new(secrets)),
            |_, t| t != IDLE_FLUSH || quiet.pop().unwrap_or(true),
            |c| out.push(c.to_vec()),
            || false,
        );
        assert_eq!(out, vec![b"a: ".to_vec(), b"[REDACTED] b: [REDACTED] c\n".to_vec()]);
    }

    /// A partial line ending in a value's first byte still goes out when the task is quiet.
    #[test]
    fn a_prompt_ending_like_a_value_is_not_held_up() {
        let secrets = crate::tasks::mask::Secrets::shared(["5ecret-value"]);
        let mut quiet = vec![false];
        let mut out = Vec::new();
        read_loop(
            pieces(vec![b"progress 45".to_vec(), b"%\n".to_vec()]),
            Some(Masker::new(secrets)),
            |_, t| t != IDLE_FLUSH || quiet.pop().unwrap_or(true),
            |c| out.push(c.to_vec()),
            || false,
        );
        assert_eq!(out, vec![b"progress 45".to_vec(), b"%\n".to_vec()]);
    }

    #[test]
    fn boundary() {
        let s = "aé".as_bytes();
        assert_eq!(utf8_boundary(s), 3);
        assert_eq!(utf8_boundary(&s[..2]), 1);
        assert_eq!(utf8_boundary(b"abc"), 3);
    }
}
