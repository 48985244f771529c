//! The ledger stream (`demo.v1.LedgerService/StreamEntries`): signed positions
//! `first .. first + count`, resumed through the proto3 `optional` `after_position`, so a
//! stream can cross 0 (a position with no bytes on the wire) and "after 0" differs from
//! "not set".

use std::ops::Range;

/// The note of the entry at `position`.
pub fn note(position: i64) -> String {
    format!("entry {position}")
}

/// The positions a `StreamEntries` stream sends, in order: `first .. first + count`, from
/// strictly after `after` when it is set (with `inclusive`, from `after` itself). An error if
/// `first + count` does not fit a sint64.
pub fn positions(
    first: i64,
    count: u64,
    after: Option<i64>,
    inclusive: bool,
) -> Result<Range<i64>, String> {
    let end = i64::try_from(i128::from(first) + i128::from(count))
        .map_err(|_| format!("first {first} + count {count} is past the largest sint64"))?;
    let start = match after {
        None => first,
        Some(after) if inclusive => after.max(first),
        Some(after) => after.saturating_add(1).max(first),
    };
    Ok(start.min(end)..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_zero_is_on_the_wire_and_position_zero_is_not() {
        use prost::Message as _;
        use reprise_proto::demo::v1::{Entry, StreamEntriesRequest};
        let unset = StreamEntriesRequest::default();
        assert!(unset.encode_to_vec().is_empty());
        let zero = StreamEntriesRequest {
            after_position: Some(0),
            ..unset
        };
        assert_eq!(zero.encode_to_vec(), [0x08, 0x00]);
        assert_eq!(StreamEntriesRequest::decode(&[0x08, 0x00][..]), Ok(zero));
        let entry = Entry {
            position: 0,
            note: String::new(),
            settled_at: None,
        };
        assert!(entry.encode_to_vec().is_empty());
    }

    #[test]
    fn positions_honour_first_count_and_after() {
        assert_eq!(positions(-3, 7, None, false), Ok(-3..4));
        assert_eq!(positions(-3, 7, Some(0), false), Ok(1..4));
        assert_eq!(positions(-3, 7, Some(0), true), Ok(0..4));
        assert_eq!(positions(-3, 7, Some(-10), false), Ok(-3..4));
        assert_eq!(positions(-3, 7, Some(9), false), Ok(4..4));
        assert_eq!(positions(5, 0, None, false), Ok(5..5));
        assert!(positions(i64::MAX, 2, None, false).is_err());
        assert_eq!(
            positions(i64::MAX - 2, 2, Some(i64::MAX - 2), false),
            Ok(i64::MAX - 1..i64::MAX)
        );
    }
}
