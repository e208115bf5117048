//! The per-task output log: stdout and stderr interleaved in the order they were read, as
//! records of `[stream tag: u8][length: u32 LE][bytes]`. The framing keeps the streams
//! separable (`?stream=stdout`) and the offsets exact. The file is read as untrusted: an unknown
//! tag or a length over [`MAX_RECORD`] is damage ([`Damage`]): what precedes it is served, and
//! the reader stops there. A finished log whose last record runs past its end was cut short
//! (a write failed on a full disk, a crash, a truncated file): [`Next::Cut`].

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::events::Stream;

/// A stream's tag in the log.
fn tag(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => b'o',
        Stream::Stderr => b'e',
    }
}

fn stream_of_tag(tag: u8) -> Option<Stream> {
    match tag {
        b'o' => Some(Stream::Stdout),
        b'e' => Some(Stream::Stderr),
        _ => None,
    }
}

const HEADER: usize = 5;

/// The longest record the agent writes: a reader's chunk is at most a carried line
/// ([`crate::tasks::reader::MAX_CARRY`]) plus one block; `append` splits anything longer. A
/// longer length in a log is damage, never a buffer size.
pub const MAX_RECORD: usize = 1 << 20;

/// Appends one record, header and data in one `writev`, so a concurrent reader sees it whole
/// or not at all (and no buffer outlives the call). Data over [`MAX_RECORD`] becomes several
/// records.
pub fn append(file: &mut File, stream: Stream, data: &[u8]) -> io::Result<()> {
    for piece in data.chunks(MAX_RECORD) {
        append_record(file, stream, piece)?;
    }
    Ok(())
}

fn append_record(file: &mut File, stream: Stream, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).expect("a record is at most MAX_RECORD bytes").to_le_bytes();
    let head = [tag(stream), len[0], len[1], len[2], len[3]];
    let total = HEADER + data.len();
    let written = crate::eintr::retry(|| file.write_vectored(&[io::IoSlice::new(&head), io::IoSlice::new(data)]))?;
    if written < total {
        // Short write (a full disk, a signal): finish it plainly.
        let rest = head[..].iter().chain(data).copied().skip(written).collect::<Vec<u8>>();
        file.write_all(&rest)?;
    }
    Ok(())
}

/// Where and why a log stops being readable: everything before `offset` is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub why: &'static str,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "damaged at byte {} ({})", self.offset, self.why)
    }
}

/// What [`LogReader::next`] found at its position.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole record of this stream (its bytes in the buffer, unless skipped).
    Record(Stream),
    /// No whole record here: the end of the log, or, in a log still being written, one that is
    /// not complete yet.
    End,
    /// In a finished log: a record starts at this offset and the file ends before it does.
    Cut(u64),
    Damaged(Damage),
}

/// Reads records from a log, from the start; tolerates a log that is still growing. Every
/// length is checked against the file's real size (and [`MAX_RECORD`]) before it sizes a
/// buffer, so a damaged header costs nothing.
pub struct LogReader {
    file: File,
    pos: u64,
    /// The file's size when last asked: a record that seems to run past it makes the reader
    /// ask again (the log may have grown) before it calls it unfinished.
    len: u64,
}

impl LogReader {
    pub fn new(file: File) -> LogReader {
        LogReader { file, pos: 0, len: 0 }
    }

    /// The offset of the next record.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether `end` bytes are in the file, asking its size again when the last answer was short.
    fn holds(&mut self, end: u64) -> io::Result<bool> {
        if end > self.len {
            self.len = self.file.metadata()?.len();
        }
        Ok(end <= self.len)
    }

    /// The next record into `buf`. With `complete` (the task has ended, so nothing more will be
    /// written), a record cut short by the end of the file is [`Next::Cut`]; without, it is one
    /// still being written ([`Next::End`]).
    pub fn next(&mut self, buf: &mut Vec<u8>, complete: bool) -> io::Result<Next> {
        self.advance(Some(buf), complete)
    }

    /// Like [`LogReader::next`], without reading the record's bytes: for walking a log.
    /// Returns the record's length too.
    pub fn skip(&mut self, complete: bool) -> io::Result<(Next, u64)> {
        let at = self.pos;
        let next = self.advance(None, complete)?;
        Ok((next, (self.pos - at).saturating_sub(HEADER as u64)))
    }

    fn advance(&mut self, buf: Option<&mut Vec<u8>>, complete: bool) -> io::Result<Next> {
        let at = self.pos;
        let cut = Ok(if complete { Next::Cut(at) } else { Next::End });
        if !self.holds(at + HEADER as u64)? {
            return if self.len == at { Ok(Next::End) } else { cut };
        }
        let mut head = [0u8; HEADER];
        if !read_full_at(&self.file, &mut head, at)? {
            return cut;
        }
        let Some(stream) = stream_of_tag(head[0]) else {
            return Ok(Next::Damaged(Damage { offset: at, why: "unknown record tag" }));
        };
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_RECORD {
            return Ok(Next::Damaged(Damage { offset: at, why: "record length out of range" }));
        }
        let end = at + (HEADER + len) as u64;
        if !self.holds(end)? {
            return cut;
        }
        if let Some(buf) = buf {
            buf.clear();
            buf.resize(len, 0);
            if !read_full_at(&self.file, buf, at + HEADER as u64)? {
                return cut;
            }
        }
        self.pos = end;
        Ok(Next::Record(stream))
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

/// What a walk through a whole log found: the bytes of each stream (stdout, stderr) up to
/// the end or the damage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub sizes: [u64; 2],
    pub damage: Option<Damage>,
    /// Where a finished log ends inside a record.
    pub cut: Option<u64>,
}

/// Walks the log at `path` by its headers (no data is read). A missing log is empty;
/// `complete` as in [`LogReader::next`].
pub fn scan(path: &Path, complete: bool) -> io::Result<Scan> {
    let mut out = Scan::default();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut reader = LogReader::new(f);
    loop {
        match reader.skip(complete)? {
            (Next::Record(stream), len) => out.sizes[stream.index()] += len,
            (Next::End, _) => return Ok(out),
            (Next::Cut(at), _) => {
                out.cut = Some(at);
                return Ok(out);
            }
            (Next::Damaged(d), _) => {
                out.damage = Some(d);
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("codara-log-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trip_and_partial_tail() {
        let path = temp("round");
        let mut f = File::create(&path).unwrap();
        append(&mut f, Stream::Stdout, b"a\n").unwrap();
        append(&mut f, Stream::Stderr, b"err\n").unwrap();
        f.write_all(&[b'o', 10, 0, 0, 0, b'x']).unwrap(); // cut short
        let mut r = LogReader::new(File::open(&path).unwrap());
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf, false).unwrap(), Next::Record(Stream::Stdout));
        assert_eq!(buf, b"a\n");
        assert_eq!(r.next(&mut buf, false).unwrap(), Next::Record(Stream::Stderr));
        assert_eq!(buf, b"err\n");
        // Still being written, or cut short in a finished log.
        assert_eq!(r.next(&mut buf, false).unwrap(), Next::End);
        assert_eq!(r.next(&mut buf, true).unwrap(), Next::Cut(16));
        assert_eq!(scan(&path, true).unwrap(), Scan { sizes: [2, 4], damage: None, cut: Some(16) });
        // It grows to its whole length: read on.
        f.write_all(b"yyyyyyyyy").unwrap();
        assert_eq!(r.next(&mut buf, false).unwrap(), Next::Record(Stream::Stdout));
        assert_eq!(buf, b"xyyyyyyyyy");
        assert_eq!(r.next(&mut buf, true).unwrap(), Next::End);
        std::fs::remove_file(&path).unwrap();
    }

    /// A length of 0xFFFFFFF0 used to size a 4 GiB buffer.
    #[test]
    fn a_huge_length_is_damage_not_an_allocation() {
        let path = temp("huge");
        let mut f = File::create(&path).unwrap();
        append(&mut f, Stream::Stdout, b"good\n").unwrap();
        f.write_all(&[b'o', 0xF0, 0xFF, 0xFF, 0xFF, b'x', b'y']).unwrap();
        for complete in [false, true] {
            let mut r = LogReader::new(File::open(&path).unwrap());
            let mut buf = Vec::new();
            assert_eq!(r.next(&mut buf, complete).unwrap(), Next::Record(Stream::Stdout));
            let d = Damage { offset: 10, why: "record length out of range" };
            assert_eq!(r.next(&mut buf, complete).unwrap(), Next::Damaged(d));
            assert!(buf.capacity() < 1 << 20, "{}", buf.capacity());
        }
        let s = scan(&path, true).unwrap();
        assert_eq!(s.sizes, [5, 0]);
        assert_eq!(s.damage.map(|d| d.offset), Some(10));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_unknown_tag_is_damage_and_sizes_stop_there() {
        let path = temp("tag");
        let mut f = File::create(&path).unwrap();
        append(&mut f, Stream::Stdout, b"one\n").unwrap();
        append(&mut f, Stream::Stderr, b"two\n").unwrap();
        f.write_all(&[0x00, 1, 0, 0, 0, b'z']).unwrap();
        append(&mut f, Stream::Stdout, b"after\n").unwrap();
        let s = scan(&path, false).unwrap();
        assert_eq!(s.sizes, [4, 4]);
        assert_eq!(s.damage, Some(Damage { offset: 18, why: "unknown record tag" }));
        assert_eq!(s.cut, None);
        assert_eq!(scan(&temp("missing"), true).unwrap(), Scan::default());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn long_data_becomes_several_records() {
        let path = temp("long");
        let mut f = File::create(&path).unwrap();
        append(&mut f, Stream::Stdout, &vec![b'x'; MAX_RECORD + 3]).unwrap();
        let mut r = LogReader::new(File::open(&path).unwrap());
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf, true).unwrap(), Next::Record(Stream::Stdout));
        assert_eq!(buf.len(), MAX_RECORD);
        assert_eq!(r.next(&mut buf, true).unwrap(), Next::Record(Stream::Stdout));
        assert_eq!(buf.len(), 3);
        assert_eq!(r.next(&mut buf, true).unwrap(), Next::End);
        std::fs::remove_file(&path).unwrap();
    }
}
