//! The synthetic event feed's deterministic payloads.

/// The largest payload a `StreamEvents` request may ask for: well below the 4 MiB message
/// limit gRPC clients decode by default.
pub const MAX_PAYLOAD_BYTES: u32 = 1 << 20;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Payloads of one length: event `seq` carries `len` bytes of a repeating alphanumeric text,
/// starting at offset `seq % 36`. One buffer serves every event, so producing or checking a
/// payload is a slice, not a computation.
#[derive(Debug, Clone)]
pub struct PayloadPattern {
    text: Vec<u8>,
    len: usize,
}

impl PayloadPattern {
    pub fn new(len: usize) -> Self {
        let text = ALPHABET
            .iter()
            .copied()
            .cycle()
            .take(len + ALPHABET.len())
            .collect();
        Self { text, len }
    }

    /// The payload of event `seq`.
    pub fn for_seq(&self, seq: u64) -> &[u8] {
        let offset = (seq % ALPHABET.len() as u64) as usize;
        &self.text[offset..offset + self.len]
    }
}

/// Where a stream of events starts: strictly after `after`, or with `inclusive` at `after`
/// itself (sequences start at 1, so `0` means 1 either way).
pub fn first_seq(after: u64, inclusive: bool) -> u64 {
    if inclusive {
        after.max(1)
    } else {
        after.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_length_and_depend_on_seq() {
        let pattern = PayloadPattern::new(5);
        assert_eq!(pattern.for_seq(0), b"abcde");
        assert_eq!(pattern.for_seq(1), b"bcdef");
        assert_eq!(pattern.for_seq(35), b"9abcd");
        assert_eq!(pattern.for_seq(36), b"abcde");
        assert!(PayloadPattern::new(0).for_seq(7).is_empty());
    }

    #[test]
    fn first_seq_honours_inclusive() {
        assert_eq!(first_seq(0, false), 1);
        assert_eq!(first_seq(0, true), 1);
        assert_eq!(first_seq(7, false), 8);
        assert_eq!(first_seq(7, true), 7);
    }
}
