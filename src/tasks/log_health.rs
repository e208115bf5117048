//! What the agent knows of a task's output log once it has read it: whole, damaged (an
//! unreadable record: what precedes it is served), or incomplete (it holds fewer bytes than the
//! task produced: a write failed on a full disk, or the file was cut or deleted). Reported on
//! the task object (`outputDamaged`, `outputDamagedAt`, `outputIncomplete`) and in the
//! `X-Codara-Output` header of `GET /task/:id/output`.

use crate::tasks::output_log::{Damage, Scan};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogHealth {
    pub damage: Option<Damage>,
    /// Bytes the task produced that the log does not hold (before any damage).
    pub missing: u64,
    /// The log ends inside a record at this offset: it was cut short.
    pub cut: Option<u64>,
    /// Bytes the task produced, both streams.
    pub produced: u64,
}

impl LogHealth {
    /// Judges a walk of the log against the byte counts recorded for the task.
    pub fn judge(scan: &Scan, produced: [u64; 2]) -> LogHealth {
        let held = scan.sizes[0].min(produced[0]) + scan.sizes[1].min(produced[1]);
        let produced = produced[0] + produced[1];
        LogHealth { damage: scan.damage, missing: produced - held, cut: scan.cut, produced }
    }

    /// The log could not be written: only the in-memory tails are left.
    pub fn unwritten(produced: [u64; 2]) -> LogHealth {
        let produced = produced[0] + produced[1];
        LogHealth { damage: None, missing: produced, cut: None, produced }
    }

    pub fn is_whole(&self) -> bool {
        self.damage.is_none() && !self.incomplete()
    }

    pub fn incomplete(&self) -> bool {
        self.missing > 0 || self.cut.is_some()
    }

    /// What is wrong, for a log line; `None` when the log is whole.
    pub fn describe(&self) -> Option<String> {
        if let Some(d) = self.damage {
            return Some(d.to_string());
        }
        if self.missing > 0 {
            return Some(format!(
                "incomplete: it holds {} of the {} bytes the task wrote",
                self.produced - self.missing,
                self.produced
            ));
        }
        self.cut.map(|at| format!("incomplete: it ends inside a record at byte {at}"))
    }

    /// The `X-Codara-Output` header of `/output`, when the log is not whole.
    pub fn header(&self) -> Option<String> {
        if let Some(d) = self.damage {
            return Some(format!("{d}; the output before it is served"));
        }
        if self.missing > 0 {
            return Some(format!(
                "incomplete: the output log holds {} of the {} bytes the task wrote (it could not all be written: a full disk?)",
                self.produced - self.missing,
                self.produced
            ));
        }
        self.cut.map(|at| format!("incomplete: the output log ends inside a record at byte {at}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judged_against_the_counts() {
        let scan = |sizes, damage, cut| Scan { sizes, damage, cut };
        let whole = LogHealth::judge(&scan([10, 2], None, None), [10, 2]);
        assert!(whole.is_whole() && whole.header().is_none() && whole.describe().is_none());
        let short = LogHealth::judge(&scan([4, 0], None, Some(9)), [10, 2]);
        assert_eq!(short.missing, 8);
        assert!(short.header().unwrap().starts_with("incomplete: the output log holds 4 of the 12 bytes"));
        let cut = LogHealth::judge(&scan([4, 0], None, Some(9)), [4, 0]);
        assert!(cut.incomplete());
        assert_eq!(cut.header().unwrap(), "incomplete: the output log ends inside a record at byte 9");
        let damage = Damage { offset: 9, why: "unknown record tag" };
        let bad = LogHealth::judge(&scan([4, 0], Some(damage), None), [10, 2]);
        assert!(bad.header().unwrap().starts_with("damaged at byte 9 (unknown record tag)"));
        // More in the log than recorded (counts taken at a crash) is not "missing".
        assert!(LogHealth::judge(&scan([20, 0], None, None), [10, 0]).is_whole());
    }
}
