//! `GET /task/:id/output`: the task's output log as a byte stream, optionally one stream
//! alone, optionally following it live until the task ends.

use std::fs::File;
use std::io::{self, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use crate::events::Stream;
use crate::protocol::TaskStatus;
use crate::tasks::output_log::{LogReader, Next};
use crate::tasks::task::Task;

/// How long a follower sleeps before looking again when nothing wakes it.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

pub struct OutputStream {
    task: Arc<Task>,
    path: PathBuf,
    reader: Option<LogReader>,
    only: Option<Stream>,
    follow: bool,
    buf: Vec<u8>,
    at: usize,
    /// The log has an unreadable record: the stream ends there (the header said so).
    damaged: bool,
    /// Bytes of both streams consumed so far (what the follower has seen).
    seen: u64,
    /// The client's socket, watched while following a silent task: a follower has nothing to
    /// write, so without it a client that left would go unnoticed until the task ends.
    peer: Option<TcpStream>,
}

impl OutputStream {
    pub fn new(
        task: Arc<Task>,
        path: PathBuf,
        only: Option<Stream>,
        follow: bool,
        peer: Option<TcpStream>,
    ) -> OutputStream {
        OutputStream { task, path, reader: None, only, follow, buf: Vec::new(), at: 0, damaged: false, seen: 0, peer }
    }

    /// Whether the client has closed its side (or the connection broke).
    fn peer_gone(&self) -> bool {
        let Some(peer) = &self.peer else { return false };
        let mut fds = [PollFd::new(peer, PollFlags::RDHUP)];
        match crate::eintr::poll(&mut fds, Some(Duration::ZERO)) {
            Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }

    /// The next record of the wanted stream into `buf`; false when there is none yet (or
    /// none ever: damage). `complete`: the task has ended, so the log is whole.
    fn next_chunk(&mut self, complete: bool) -> io::Result<bool> {
        loop {
            if self.reader.is_none() {
                match File::open(&self.path) {
                    Ok(f) => self.reader = Some(LogReader::new(f)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            let reader = self.reader.as_mut().expect("opened above");
            match reader.next(&mut self.buf, complete)? {
                Next::End | Next::Cut(_) => return Ok(false),
                Next::Damaged(_) => {
                    self.damaged = true;
                    self.buf.clear();
                    return Ok(false);
                }
                Next::Record(stream) => {
                    self.seen += self.buf.len() as u64;
                    self.at = 0;
                    if self.only.is_none_or(|s| s == stream) && !self.buf.is_empty() {
                        return Ok(true);
                    }
                    self.buf.clear();
                }
            }
        }
    }
}

impl Read for OutputStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.at);
                out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            // Look at the status before reading: once it has ended, the log is complete.
            let ended = self.task.status() != TaskStatus::Running;
            if self.next_chunk(ended)? {
                continue;
            }
            if !self.follow || ended || self.damaged {
                return Ok(0);
            }
            self.task.wait_output(self.seen, FOLLOW_POLL);
            if self.peer_gone() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"));
            }
        }
    }
}
