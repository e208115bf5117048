//! `GET /tasks` as a byte stream: `{"running":N,"capacity":N,"tasks":[…]}` with each task
//! serialised only when the reader gets to it. A list of `TASK_HISTORY` tasks is never held
//! as one JSON value (that cost 1.7 GB for 30 tasks with 1 MiB requests): what is held is
//! the list of tasks and one task's JSON at a time. A list that fits in
//! [`crate::http::reply::SMALL_REPLY`] is still sent whole, with a `Content-Length`.

use std::io::{self, Read};
use std::sync::Arc;

use crate::tasks::task::Task;

pub struct TaskList {
    /// Newest first; taken from the back.
    tasks: Vec<Arc<Task>>,
    /// Bytes serialised and not yet read.
    pending: Vec<u8>,
    at: usize,
    first: bool,
    done: bool,
}

impl TaskList {
    pub fn new(tasks: Vec<Arc<Task>>, running: usize, capacity: usize) -> TaskList {
        let mut tasks = tasks;
        tasks.reverse();
        let pending = format!("{{\"running\":{running},\"capacity\":{capacity},\"tasks\":[").into_bytes();
        TaskList { tasks, pending, at: 0, first: true, done: false }
    }

    /// Serialises the next task (or the closing brackets) into `pending`; false at the end.
    fn refill(&mut self) -> bool {
        self.pending.clear();
        self.at = 0;
        match self.tasks.pop() {
            Some(task) => {
                if !std::mem::take(&mut self.first) {
                    self.pending.push(b',');
                }
                self.pending.extend_from_slice(&task.to_json_bytes(false));
                true
            }
            None if !self.done => {
                self.done = true;
                self.pending.extend_from_slice(b"]}");
                true
            }
            None => false,
        }
    }

    /// The whole list when it takes at most `max` bytes, else the reader with what it has
    /// read so far put back in front.
    pub fn small(mut self, max: usize) -> Result<Vec<u8>, Box<dyn Read + Send>> {
        let mut head = Vec::new();
        while head.len() <= max {
            if self.at == self.pending.len() && !self.refill() {
                return Ok(head);
            }
            head.extend_from_slice(&self.pending[self.at..]);
            self.at = self.pending.len();
        }
        Err(Box::new(io::Cursor::new(head).chain(self)))
    }
}

impl Read for TaskList {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.pending.len() {
            if !self.refill() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.pending.len() - self.at);
        out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_small_and_whole() {
        let body = TaskList::new(Vec::new(), 1, 4).small(100).ok().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"running": 1, "capacity": 4, "tasks": []}));
        let mut streamed = Vec::new();
        TaskList::new(Vec::new(), 0, 2).small(3).err().unwrap().read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, br#"{"running":0,"capacity":2,"tasks":[]}"#);
    }
}
