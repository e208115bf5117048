//! One WebSocket client: a `ws-N-rx` thread reading its frames (tungstenite) and a `ws-N-tx`
//! thread writing its queue. Each owns one handle on the connection (`NetStream::try_clone`:
//! a plain socket, or TLS split between the two, see tiny_http's PATCHES.md item 14), so
//! pings and close frames are answered while the writer is busy. The queue is bounded in
//! bytes ([`CLIENT_BUFFER_BYTES`]); the hub closes a client that falls further behind.
//!
//! Keep-alive: the writer pings every `WS_PING_INTERVAL` on a fixed schedule, whether or not
//! it has events to send (an old main server never sends anything: its pongs are its only
//! sign of life). The reader counts any frame as a sign of life and closes a client that
//! sent none for [`SILENT_INTERVALS`] intervals. An interrupted read or write (EINTR, see
//! [`crate::eintr`]) is retried, never taken for the end of the connection.

use std::io::{self, BufWriter, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::NetStream;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::ws::ctl::{self, Ctl};
use crate::ws::hub::HubHandle;
use crate::ws::queue::{
    Budget, Out, PongSlot, Queue, CLOSE_GOING_AWAY, CLOSE_LINGER, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_TOO_BIG,
    WRITE_TIMEOUT,
};

/// A client that sends no frame (not even a pong) for this many ping intervals is closed.
pub const SILENT_INTERVALS: u32 = 3;
/// Largest message a client may send (subscribe requests are tiny).
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// The read half: reads the socket, throws away whatever tungstenite tries to write (its
/// automatic pong and close replies); the writer thread sends those instead.
pub struct ReadHalf(pub NetStream);

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // tungstenite takes any error for the end of the connection.
        crate::eintr::retry(|| self.0.read(buf))
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Starts the two threads of client `id` on an upgraded stream (`leftover` = bytes the
/// client sent right after its handshake), pinging it every `ping_interval`.
pub fn start(
    id: u64,
    stream: NetStream,
    leftover: Vec<u8>,
    queue_rx: Receiver<Out>,
    queue: Queue,
    hub_handle: &HubHandle,
    ping_interval: Duration,
) -> io::Result<()> {
    let (hub, threads) = (hub_handle.ctl.clone(), &hub_handle.threads);
    let silence = ping_interval * SILENT_INTERVALS;
    // TCP_NODELAY is on already: tiny_http sets it on every connection it accepts.
    stream.set_read_timeout(Some(silence))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let write_half = stream.try_clone()?;
    // The writer gets the queue's counters but no sender: it ends when every sender is gone.
    let side = WriterSide {
        budget: Arc::clone(&queue.budget),
        kicked: Arc::clone(&queue.kicked),
        closing: Arc::clone(&queue.closing),
        pong: queue.pong_slot(),
    };
    std::thread::Builder::new().name(format!("ws-{id}-tx")).stack_size(64 * 1024).spawn({
        let alive = threads.enter();
        move || {
            let _alive = alive;
            writer(id, write_half, queue_rx, side, ping_interval)
        }
    })?;
    let ws = WebSocket::from_partially_read(ReadHalf(stream), leftover, Role::Server, Some(ws_config()));
    let spawned = std::thread::Builder::new().name(format!("ws-{id}-rx")).stack_size(128 * 1024).spawn({
        let (hub, alive) = (hub.clone(), threads.enter());
        move || {
            let _alive = alive;
            reader(id, ws, queue, hub, silence)
        }
    });
    if let Err(e) = spawned {
        let _ = hub.send(Ctl::Leave { id });
        return Err(e);
    }
    Ok(())
}

fn reader(id: u64, mut ws: WebSocket<ReadHalf>, queue: Queue, hub: Sender<Ctl>, silence: Duration) {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => match ctl::parse_request(t.as_str()) {
                Ok(ctl) => {
                    let _ = hub.send(ctl(id));
                }
                Err(why) => queue.push_error(&why, None),
            },
            Ok(Message::Ping(p)) => queue.pong(p.to_vec()),
            Ok(Message::Close(frame)) => {
                // RFC 6455 §7.4: a code a client may not send is a protocol error; tungstenite
                // hands such a frame over as 1002 already. The answer echoes 1002.
                let code = frame.map(|f| u16::from(f.code));
                if code.is_some_and(|c| c == CLOSE_PROTOCOL || !close_code_allowed(c)) {
                    log::info!("websocket client {id}: closed with a protocol error (close code not allowed)");
                    queue.push_control(Out::Close(CLOSE_PROTOCOL, "invalid close code"));
                } else {
                    queue.push_control(Out::Close(CLOSE_NORMAL, ""));
                }
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                if !queue.closing.load(Ordering::Acquire) {
                    log::info!("websocket client {id}: answered no ping for {} ms; closing", silence.as_millis());
                    queue.push_control(Out::Close(CLOSE_GOING_AWAY, "idle"));
                }
                break;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Io(e)) => {
                log::debug!("websocket client {id}: read failed: {e}");
                break;
            }
            Err(tungstenite::Error::Capacity(e)) => {
                log::info!("websocket client {id}: {e}; closing");
                queue.push_control(Out::Close(CLOSE_TOO_BIG, "message too big"));
                break;
            }
            Err(e) => {
                log::info!("websocket client {id}: {e}; closing");
                queue.push_control(Out::Close(CLOSE_PROTOCOL, "protocol error"));
                break;
            }
        }
    }
    let _ = hub.send(Ctl::Leave { id });
}

/// What the writer shares with the queue's senders.
struct WriterSide {
    budget: Arc<Budget>,
    kicked: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    pong: PongSlot,
}

fn writer(id: u64, stream: NetStream, rx: Receiver<Out>, side: WriterSide, ping_interval: Duration) {
    // Every write goes through write_all or flush, which retry an interrupted write.
    let mut w = BufWriter::with_capacity(16 * 1024, &stream);
    let mut next_ping = Instant::now() + ping_interval;
    let result = (|| -> io::Result<()> {
        loop {
            let mut next = match rx.recv_deadline(next_ping) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return write_close(&mut w, CLOSE_NORMAL, ""),
            };
            // Everything already queued goes out in one flush: few syscalls under load. The
            // ping is due on its schedule even while events keep coming.
            loop {
                if Instant::now() >= next_ping {
                    write_frame(&mut w, 0x9, b"")?;
                    next_ping = Instant::now() + ping_interval;
                }
                let Some(out) = next.take() else { break };
                side.budget.release(out.cost());
                match out {
                    Out::Text(s) if !side.kicked.load(Ordering::Acquire) => write_frame(&mut w, 0x1, s.as_bytes())?,
                    Out::Text(_) => {}
                    Out::PongDue => {
                        if let Some(p) = side.pong.take() {
                            write_frame(&mut w, 0xA, &p)?;
                        }
                    }
                    Out::Close(code, reason) => return write_close(&mut w, code, reason),
                }
                next = rx.try_recv().ok();
            }
            w.flush()?;
        }
    })();
    drop(w);
    match result {
        // The close frame is out: end our side, and let the reader take the client's answer
        // (or whatever it still sends) for a moment; closing a socket with unread bytes would
        // send a reset, and the client would lose the close frame.
        Ok(()) => {
            side.closing.store(true, Ordering::Release);
            let _ = stream.set_read_timeout(Some(CLOSE_LINGER));
            let _ = stream.shutdown(Shutdown::Write);
        }
        Err(e) => {
            log::debug!("websocket client {id}: write failed: {e}");
            // Wakes the reader too, if it is still waiting.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Whether a client may send this close code (RFC 6455 §7.4.1 and the IANA registry):
/// 1000–1003, 1007–1014, and 3000–4999 for libraries and applications.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn write_close(w: &mut impl Write, code: u16, reason: &str) -> io::Result<()> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    write_frame(w, 0x8, &payload)?;
    w.flush()
}

/// Writes one unmasked, final server frame.
pub fn write_frame(w: &mut impl Write, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode;
    let n = match payload.len() {
        len @ 0..=125 => {
            head[1] = len as u8;
            2
        }
        len @ 126..=65535 => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    w.write_all(&head[..n])?;
    w.write_all(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, 65535] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn frame_lengths() {
        for (len, head) in [(5usize, 2usize), (300, 4), (70_000, 10)] {
            let mut out = Vec::new();
            write_frame(&mut out, 1, &vec![b'a'; len]).unwrap();
            assert_eq!(out.len(), head + len);
            assert_eq!(out[0], 0x81);
        }
    }
}
