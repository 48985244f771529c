//! The check shared by streams whose key is an integer from one contiguous range (`data`,
//! `ledger`): a bitmap over the expected range, grown only as far as the highest key received,
//! so memory follows what actually came.

use std::fs::File;
use std::io::Write as _;
use std::ops::Range;

use tonic::Status;

use super::Summary;

pub(crate) struct RangeCheck {
    expected: Range<i128>,
    seen: Vec<u64>,
    unique: u64,
    highest: Option<i128>,
    record: Option<File>,
    pub(crate) summary: Summary,
}

impl RangeCheck {
    pub(crate) fn new(kind: &str, expected: Range<i128>, record: Option<File>) -> Self {
        Self {
            expected,
            seen: Vec::new(),
            unique: 0,
            highest: None,
            record,
            summary: Summary::new(kind),
        }
    }

    /// One message with key `key`; `corrupt`: its content is wrong for the key.
    pub(crate) fn observe(&mut self, key: i128, corrupt: bool) -> Result<(), Status> {
        if let Some(record) = &mut self.record {
            // One write per line: what a killed client read is on disk.
            record
                .write_all(format!("{key}\n").as_bytes())
                .map_err(|e| Status::internal(format!("writing the --record file: {e}")))?;
        }
        self.summary.saw(&key.to_string());
        if corrupt {
            self.summary.corrupt += 1;
        }
        if self.expected.contains(&key) {
            let index = usize::try_from(key - self.expected.start).unwrap_or(usize::MAX);
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if word >= self.seen.len() {
                self.seen.resize(word + 1, 0);
            }
            if self.seen[word] & bit != 0 {
                self.summary.duplicates += 1;
                return Ok(());
            }
            self.seen[word] |= bit;
            self.unique += 1;
        } else {
            self.summary.unexpected += 1;
        }
        if self.highest.is_some_and(|highest| key <= highest) {
            self.summary.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(key, |highest| highest.max(key)));
        Ok(())
    }

    /// Counts the expected keys that never came.
    pub(crate) fn compare(&mut self) {
        let expected = u64::try_from(self.expected.end - self.expected.start).unwrap_or(0);
        self.summary.missing = expected.saturating_sub(self.unique);
    }
}
