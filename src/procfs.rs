//! `/proc/<pid>/stat`, read by field number as proc(5) numbers them.

/// One process's `/proc/<pid>/stat` line.
pub struct Stat(String);

impl Stat {
    /// Reads `/proc/<who>/stat`; `who` is a pid or `self`.
    pub fn read(who: impl std::fmt::Display) -> Option<Stat> {
        std::fs::read_to_string(format!("/proc/{who}/stat")).ok().map(Stat)
    }

    pub fn parse(line: &str) -> Stat {
        Stat(line.to_owned())
    }

    /// Field 1: the pid, as the PID namespace of the /proc mount sees it.
    pub fn pid(&self) -> Option<i32> {
        self.0.split(' ').next()?.parse().ok()
    }

    /// Field `n` (3 = state, 4 = parent pid, 6 = session, 22 = start time), for n ≥ 3. The
    /// command name (field 2) may hold spaces and parentheses: fields are counted from its
    /// last ')'.
    pub fn field(&self, n: usize) -> Option<&str> {
        let rest = &self.0[self.0.rfind(')')? + 1..];
        rest.split_whitespace().nth(n.checked_sub(3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn fields_are_counted_past_an_odd_command_name() {
        let s = Stat::parse("7 (a) b (c)) S 99 7 5 0");
        assert_eq!(s.pid(), Some(7));
        assert_eq!(s.field(3), Some("S"));
        assert_eq!(s.field(4), Some("99"));
        assert_eq!(s.field(6), Some("5"));
        assert_eq!(s.field(9), None);
        assert_eq!(s.field(2), None);
        assert_eq!(Stat::parse("7 (x").field(3), None);
        assert_eq!(Stat::parse("").field(3), None);
    }

    #[test]
    fn reads_this_process() {
        let s = Stat::read("self").unwrap();
        assert_eq!(
            s.field(4).and_then(|p| p.parse::<u32>().ok()),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
    }
}
