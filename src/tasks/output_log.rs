//! The per-task output log: stdout and stderr interleaved in the order they were read, as
//! records of `[stream tag: u8][length: u32 LE][bytes]`. The framing keeps the streams
//! separable (`?stream=stdout`) and the offsets exact; a record cut short by a crash is ignored.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Which pipe a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Stream::Stdout => b'o',
            Stream::Stderr => b'e',
        }
    }

    fn from_tag(tag: u8) -> Option<Stream> {
        match tag {
            b'o' => Some(Stream::Stdout),
            b'e' => Some(Stream::Stderr),
            _ => None,
        }
    }

    /// The WebSocket event name of a chunk of this stream (compat: stderr is `error`).
    pub fn event(self) -> &'static str {
        match self {
            Stream::Stdout => "output",
            Stream::Stderr => "error",
        }
    }
}

const HEADER: usize = 5;

/// Appends one record, header and data in one `writev`, so a concurrent reader sees it whole
/// or not at all (and no buffer outlives the call).
pub fn append(file: &mut File, stream: Stream, data: &[u8]) -> io::Result<()> {
    debug_assert!(data.len() <= u32::MAX as usize);
    let len = (data.len() as u32).to_le_bytes();
    let head = [stream.tag(), len[0], len[1], len[2], len[3]];
    let total = HEADER + data.len();
    let written = crate::eintr::retry(|| file.write_vectored(&[io::IoSlice::new(&head), io::IoSlice::new(data)]))?;
    if written < total {
        // Short write (a full disk, a signal): finish it plainly.
        let rest = head[..].iter().chain(data).copied().skip(written).collect::<Vec<u8>>();
        file.write_all(&rest)?;
    }
    Ok(())
}

/// Reads records from a log, from the start; tolerates a log that is still growing.
pub struct LogReader {
    file: File,
    pos: u64,
}

impl LogReader {
    pub fn new(file: File) -> LogReader {
        LogReader { file, pos: 0 }
    }

    /// The next whole record into `buf`, or `None` when there is none (yet).
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<Stream>> {
        let mut head = [0u8; HEADER];
        if !read_full_at(&self.file, &mut head, self.pos)? {
            return Ok(None);
        }
        let Some(stream) = Stream::from_tag(head[0]) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt output log"));
        };
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        buf.clear();
        buf.resize(len, 0);
        if !read_full_at(&self.file, buf, self.pos + HEADER as u64)? {
            return Ok(None);
        }
        self.pos += (HEADER + len) as u64;
        Ok(Some(stream))
    }
}

/// Like `read_exact_at`, but `false` instead of an error when the file ends first.
fn read_full_at(file: &File, buf: &mut [u8], mut offset: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Bytes of each stream in the log at `path` (stdout, stderr); zeros when there is none.
pub fn stream_sizes(path: &std::path::Path) -> [u64; 2] {
    let mut sizes = [0u64; 2];
    if let Ok(f) = File::open(path) {
        let mut reader = LogReader::new(f);
        let mut buf = Vec::new();
        while let Ok(Some(stream)) = reader.next_record(&mut buf) {
            sizes[stream.index()] += buf.len() as u64;
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_tail() {
        let path = std::env::temp_dir().join(format!("codara-log-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        append(&mut f, Stream::Stdout, b"a\n").unwrap();
        append(&mut f, Stream::Stderr, b"err\n").unwrap();
        f.write_all(&[b'o', 10, 0, 0, 0, b'x']).unwrap(); // cut short
        let mut r = LogReader::new(File::open(&path).unwrap());
        let mut buf = Vec::new();
        assert_eq!(r.next_record(&mut buf).unwrap(), Some(Stream::Stdout));
        assert_eq!(buf, b"a\n");
        assert_eq!(r.next_record(&mut buf).unwrap(), Some(Stream::Stderr));
        assert_eq!(buf, b"err\n");
        assert_eq!(r.next_record(&mut buf).unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }
}
