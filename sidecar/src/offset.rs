//! Offsets: the ordering key read from each streamed message, without decoding the message.
//!
//! The hot path walks the protobuf wire format along a field path (`key.seq` → [1, 1]) and
//! skips everything else, so a message costs a few varint reads instead of a full dynamic
//! decode. Integer keys compare as numbers, string and bytes keys bytewise.

use std::{cmp::Ordering, fmt, ops::Range};

use bytes::Bytes;

/// The scalar type of the leaf field, which fixes its wire type and how it compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    Int32,
    Int64,
    UInt32,
    UInt64,
    SInt32,
    SInt64,
    Fixed32,
    Fixed64,
    SFixed32,
    SFixed64,
    String,
    Bytes,
}

impl LeafKind {
    pub fn is_integer(self) -> bool {
        !matches!(self, LeafKind::String | LeafKind::Bytes)
    }
}

/// A field path resolved against the response descriptor: field numbers from the outside in.
#[derive(Debug, Clone)]
pub struct OffsetPath {
    pub numbers: Vec<u32>,
    pub leaf: LeafKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Offset {
    Int(i128),
    Str(Bytes),
    Bytes(Bytes),
}

impl PartialOrd for Offset {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Offset {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Offset::Int(a), Offset::Int(b)) => a.cmp(b),
            (Offset::Str(a) | Offset::Bytes(a), Offset::Str(b) | Offset::Bytes(b)) => a.cmp(b),
            // One path has one leaf kind, so mixed kinds never meet; order them stably anyway.
            (Offset::Int(_), _) => Ordering::Less,
            (_, Offset::Int(_)) => Ordering::Greater,
        }
    }
}

impl fmt::Display for Offset {
    /// The text stored in Redis: decimal for integers, the string itself, hex for bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offset::Int(n) => write!(f, "{n}"),
            Offset::Str(s) => f.write_str(&String::from_utf8_lossy(s)),
            Offset::Bytes(b) => f.write_str(&hex::encode(b)),
        }
    }
}

impl Offset {
    /// Parses the stored text form back, for a leaf of `kind`.
    pub fn parse(kind: LeafKind, text: &str) -> Result<Offset, String> {
        match kind {
            LeafKind::String => Ok(Offset::Str(Bytes::copy_from_slice(text.as_bytes()))),
            LeafKind::Bytes => hex::decode(text)
                .map(|b| Offset::Bytes(b.into()))
                .map_err(|e| format!("stored offset {text:?} is not hex: {e}")),
            _ => text
                .parse::<i128>()
                .map(Offset::Int)
                .map_err(|e| format!("stored offset {text:?} is not an integer: {e}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message is not valid protobuf: {0}")]
    Malformed(&'static str),
    #[error("offset field has wire type {found}, expected {expected}")]
    WireType { found: u8, expected: u8 },
    #[error("offset string is not valid UTF-8")]
    Utf8,
}

/// Where a message's offset is, without owning it: an integer, or the range of a string or
/// bytes value in the buffer that was scanned. The hot path compares these in place and makes
/// an owned `Offset` only for the last message of a run, which saves a reference-count pair
/// per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Int(i128),
    Str(Range<usize>),
    Bytes(Range<usize>),
}

impl Found {
    /// The same offset, with its range moved `by` bytes further into a larger buffer.
    pub fn shifted(self, by: usize) -> Found {
        match self {
            Found::Int(n) => Found::Int(n),
            Found::Str(r) => Found::Str(r.start + by..r.end + by),
            Found::Bytes(r) => Found::Bytes(r.start + by..r.end + by),
        }
    }

    fn value<'a>(&self, buf: &'a [u8]) -> Result<i128, &'a [u8]> {
        match self {
            Found::Int(n) => Ok(*n),
            Found::Str(r) | Found::Bytes(r) => Err(&buf[r.clone()]),
        }
    }

    /// Compares this offset, found in `buf`, with an owned one, as `Offset`'s order does.
    pub fn cmp_offset(&self, buf: &[u8], other: &Offset) -> Ordering {
        let theirs = match other {
            Offset::Int(n) => Ok(*n),
            Offset::Str(b) | Offset::Bytes(b) => Err(b.as_ref()),
        };
        order(self.value(buf), theirs)
    }

    /// Compares two offsets found in the same buffer.
    pub fn cmp_found(&self, other: &Found, buf: &[u8]) -> Ordering {
        order(self.value(buf), other.value(buf))
    }

    /// The owned offset; strings and bytes become slices of `buf` (no copy).
    pub fn to_offset(&self, buf: &Bytes) -> Offset {
        match self {
            Found::Int(n) => Offset::Int(*n),
            Found::Str(r) => Offset::Str(buf.slice(r.clone())),
            Found::Bytes(r) => Offset::Bytes(buf.slice(r.clone())),
        }
    }
}

/// `Offset`'s order over borrowed values: integers as numbers, strings and bytes bytewise,
/// integers first (one path has one leaf kind, so mixed kinds never meet).
fn order(a: Result<i128, &[u8]>, b: Result<i128, &[u8]>) -> Ordering {
    match (a, b) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Err(a), Err(b)) => a.cmp(b),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
    }
}

/// Reads the offset at `path` from an encoded message. `Ok(None)`: the field is absent.
/// Protobuf's "last one wins" holds: a repeated occurrence overrides an earlier one.
pub fn extract(msg: &Bytes, path: &OffsetPath) -> Result<Option<Offset>, WireError> {
    Ok(find(msg, path)?.map(|f| f.to_offset(msg)))
}

/// `extract` without taking anything out of `msg`: where the offset is.
pub fn find(msg: &[u8], path: &OffsetPath) -> Result<Option<Found>, WireError> {
    let mut found = None;
    scan(msg, 0, msg.len(), &path.numbers, path.leaf, &mut found)?;
    Ok(found)
}

fn scan(
    msg: &[u8],
    mut pos: usize,
    end: usize,
    path: &[u32],
    leaf: LeafKind,
    found: &mut Option<Found>,
) -> Result<(), WireError> {
    let buf = &msg[..end];
    while pos < end {
        let tag = read_varint(buf, &mut pos)?;
        let number = (tag >> 3) as u32;
        let wire = (tag & 7) as u8;
        if number == 0 {
            return Err(WireError::Malformed("field number 0"));
        }
        if number != path[0] {
            skip(buf, &mut pos, wire, number)?;
            continue;
        }
        if path.len() > 1 {
            expect_wire(wire, 2)?;
            let len = read_len(buf, &mut pos)?;
            scan(msg, pos, pos + len, &path[1..], leaf, found)?;
            pos += len;
            continue;
        }
        *found = Some(read_leaf(buf, &mut pos, wire, leaf)?);
    }
    Ok(())
}

fn read_leaf(buf: &[u8], pos: &mut usize, wire: u8, leaf: LeafKind) -> Result<Found, WireError> {
    Ok(match leaf {
        LeafKind::Int32 => {
            expect_wire(wire, 0)?;
            Found::Int(i128::from(read_varint(buf, pos)? as i32))
        }
        LeafKind::Int64 => {
            expect_wire(wire, 0)?;
            Found::Int(i128::from(read_varint(buf, pos)? as i64))
        }
        LeafKind::UInt32 => {
            expect_wire(wire, 0)?;
            Found::Int(i128::from(read_varint(buf, pos)? as u32))
        }
        LeafKind::UInt64 => {
            expect_wire(wire, 0)?;
            Found::Int(i128::from(read_varint(buf, pos)?))
        }
        LeafKind::SInt32 | LeafKind::SInt64 => {
            expect_wire(wire, 0)?;
            let v = read_varint(buf, pos)?;
            let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
            let n = if leaf == LeafKind::SInt32 {
                i64::from(n as i32)
            } else {
                n
            };
            Found::Int(i128::from(n))
        }
        LeafKind::Fixed32 | LeafKind::SFixed32 => {
            expect_wire(wire, 5)?;
            let raw = take::<4>(buf, pos)?;
            let v = u32::from_le_bytes(raw);
            Found::Int(if leaf == LeafKind::Fixed32 {
                i128::from(v)
            } else {
                i128::from(v as i32)
            })
        }
        LeafKind::Fixed64 | LeafKind::SFixed64 => {
            expect_wire(wire, 1)?;
            let raw = take::<8>(buf, pos)?;
            let v = u64::from_le_bytes(raw);
            Found::Int(if leaf == LeafKind::Fixed64 {
                i128::from(v)
            } else {
                i128::from(v as i64)
            })
        }
        LeafKind::String | LeafKind::Bytes => {
            expect_wire(wire, 2)?;
            let len = read_len(buf, pos)?;
            let range = *pos..*pos + len;
            *pos += len;
            if leaf == LeafKind::String {
                std::str::from_utf8(&buf[range.clone()]).map_err(|_| WireError::Utf8)?;
                Found::Str(range)
            } else {
                Found::Bytes(range)
            }
        }
    })
}

fn expect_wire(found: u8, expected: u8) -> Result<(), WireError> {
    if found == expected {
        Ok(())
    } else {
        Err(WireError::WireType { found, expected })
    }
}

fn take<const N: usize>(buf: &[u8], pos: &mut usize) -> Result<[u8; N], WireError> {
    let bytes = buf
        .get(*pos..*pos + N)
        .ok_or(WireError::Malformed("truncated fixed-width field"))?;
    *pos += N;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn read_len(buf: &[u8], pos: &mut usize) -> Result<usize, WireError> {
    let len = read_varint(buf, pos)? as usize;
    if buf.len() - *pos < len {
        return Err(WireError::Malformed(
            "length-delimited field runs past the end",
        ));
    }
    Ok(len)
}

#[inline(always)]
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    // Tags, lengths and small values are one byte: the common case, inline and without a loop.
    if let Some(&byte) = buf.get(*pos)
        && byte < 0x80
    {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    read_long_varint(buf, pos)
}

/// Varints of two bytes or more, out of line so the one-byte path stays small.
#[inline(never)]
fn read_long_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf
            .get(*pos)
            .ok_or(WireError::Malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("varint longer than 10 bytes"))
}

#[inline]
fn skip(buf: &[u8], pos: &mut usize, wire: u8, number: u32) -> Result<(), WireError> {
    match wire {
        0 => {
            read_varint(buf, pos)?;
        }
        1 => {
            take::<8>(buf, pos)?;
        }
        2 => {
            let len = read_len(buf, pos)?;
            *pos += len;
        }
        5 => {
            take::<4>(buf, pos)?;
        }
        3 => {
            // A group: skip fields until its matching end-group tag.
            loop {
                let tag = read_varint(buf, pos)?;
                let (n, w) = ((tag >> 3) as u32, (tag & 7) as u8);
                if w == 4 {
                    if n != number {
                        return Err(WireError::Malformed("mismatched end-group"));
                    }
                    break;
                }
                skip(buf, pos, w, n)?;
            }
        }
        _ => return Err(WireError::Malformed("invalid wire type")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field(number: u32, wire: u8, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(number << 3 | u32::from(wire)), out);
        if wire == 2 {
            varint(payload.len() as u64, out);
        }
        out.extend_from_slice(payload);
    }

    fn path(numbers: &[u32], leaf: LeafKind) -> OffsetPath {
        OffsetPath {
            numbers: numbers.to_vec(),
            leaf,
        }
    }

    #[test]
    fn reads_a_string_among_other_fields() {
        let mut m = Vec::new();
        field(2, 2, b"name", &mut m);
        field(5, 0, &[0x96, 0x01], &mut m);
        field(1, 2, b"abc", &mut m);
        let got = extract(&m.into(), &path(&[1], LeafKind::String)).expect("valid");
        assert_eq!(got, Some(Offset::Str(Bytes::from_static(b"abc"))));
    }

    #[test]
    fn found_offsets_compare_in_place_as_owned_ones_do() {
        let values: [&[u8]; 4] = [b"", b"a", b"ab", b"b"];
        // Two messages side by side in one buffer, each with its string offset.
        for x in values {
            for y in values {
                let (mut mx, mut my) = (Vec::new(), Vec::new());
                field(1, 2, x, &mut mx);
                field(1, 2, y, &mut my);
                let buf = Bytes::from([mx.clone(), my.clone()].concat());
                let p = path(&[1], LeafKind::String);
                let fx = find(&mx, &p).expect("valid").expect("present");
                let fy = find(&my, &p)
                    .expect("valid")
                    .expect("present")
                    .shifted(mx.len());
                let (ox, oy) = (fx.to_offset(&buf), fy.to_offset(&buf));
                assert_eq!(ox, Offset::Str(Bytes::copy_from_slice(x)));
                assert_eq!(oy, Offset::Str(Bytes::copy_from_slice(y)));
                assert_eq!(fx.cmp_found(&fy, &buf), ox.cmp(&oy), "{x:?} vs {y:?}");
                assert_eq!(fx.cmp_offset(&buf, &oy), ox.cmp(&oy), "{x:?} vs {y:?}");
            }
        }
        let (a, b) = (Found::Int(-3), Found::Int(7));
        assert!(a.cmp_found(&b, &[]).is_lt());
        assert!(b.cmp_offset(&[], &Offset::Int(7)).is_eq());
        assert_eq!(Found::Int(5).shifted(100), Found::Int(5));
    }

    #[test]
    fn multi_byte_varints_still_read() {
        let mut m = Vec::new();
        field(1, 0, &[0xff, 0xff, 0x03], &mut m); // 65535
        let got = extract(&m.into(), &path(&[1], LeafKind::UInt32)).expect("valid");
        assert_eq!(got, Some(Offset::Int(65535)));
    }

    #[test]
    fn varints_of_every_length_round_trip_and_truncated_ones_fail() {
        let mut values = vec![
            0, 1, 127, 128, 255, 300, 16_383, 16_384, 2_097_151, 2_097_152,
        ];
        values.extend((1..64).map(|bit| (1u64 << bit) - 1));
        values.extend((1..64).map(|bit| 1u64 << bit));
        values.push(u64::MAX);
        for v in values {
            let mut enc = Vec::new();
            varint(v, &mut enc);
            let mut pos = 0;
            assert_eq!(read_varint(&enc, &mut pos), Ok(v), "value {v}");
            assert_eq!(pos, enc.len(), "value {v}");
            // With a following byte, the reader stops at the varint's end.
            let mut padded = enc.clone();
            padded.push(0x01);
            let mut pos = 0;
            assert_eq!(read_varint(&padded, &mut pos), Ok(v), "value {v} padded");
            assert_eq!(pos, enc.len());
            // Cut anywhere inside, it is an error, never a wrong value.
            for cut in 0..enc.len() {
                let mut pos = 0;
                assert!(
                    read_varint(&enc[..cut], &mut pos).is_err(),
                    "value {v} cut at {cut}"
                );
            }
        }
        let mut pos = 0;
        assert!(read_varint(&[0xff; 11], &mut pos).is_err(), "11 bytes");
    }

    #[test]
    fn reads_nested_integers_and_last_one_wins() {
        let mut inner1 = Vec::new();
        field(1, 0, &[7], &mut inner1);
        let mut inner2 = Vec::new();
        field(1, 0, &[0x96, 0x01], &mut inner2);
        let mut m = Vec::new();
        field(1, 2, &inner1, &mut m);
        field(3, 2, b"payload", &mut m);
        field(1, 2, &inner2, &mut m);
        let got = extract(&m.into(), &path(&[1, 1], LeafKind::UInt64)).expect("valid");
        assert_eq!(got, Some(Offset::Int(150)));
    }

    #[test]
    fn signed_kinds_decode_correctly() {
        let mut m = Vec::new();
        field(1, 0, &[3], &mut m); // zigzag 3 = -2
        let got = extract(&m.clone().into(), &path(&[1], LeafKind::SInt64)).expect("valid");
        assert_eq!(got, Some(Offset::Int(-2)));
        let mut neg = Vec::new();
        let mut v = Vec::new();
        varint(-5i64 as u64, &mut v);
        field(1, 0, &v, &mut neg);
        let got = extract(&neg.into(), &path(&[1], LeafKind::Int64)).expect("valid");
        assert_eq!(got, Some(Offset::Int(-5)));
        let mut f = Vec::new();
        field(1, 1, &u64::MAX.to_le_bytes(), &mut f);
        let got = extract(&f.into(), &path(&[1], LeafKind::Fixed64)).expect("valid");
        assert_eq!(got, Some(Offset::Int(i128::from(u64::MAX))));
    }

    #[test]
    fn absent_field_is_none_and_garbage_is_an_error() {
        let mut m = Vec::new();
        field(2, 2, b"x", &mut m);
        assert_eq!(
            extract(&m.into(), &path(&[1], LeafKind::String)).expect("valid"),
            None
        );
        let garbage = Bytes::from_static(&[0x0a, 0x05, b'a']);
        assert!(extract(&garbage, &path(&[1], LeafKind::String)).is_err());
        let bad_utf8 = Bytes::from_static(&[0x0a, 0x01, 0xff]);
        assert_eq!(
            extract(&bad_utf8, &path(&[1], LeafKind::String)),
            Err(WireError::Utf8)
        );
        let wrong_wire = Bytes::from_static(&[0x08, 0x01]);
        assert!(matches!(
            extract(&wrong_wire, &path(&[1], LeafKind::String)),
            Err(WireError::WireType { .. })
        ));
    }

    #[test]
    fn order_and_text_round_trip() {
        assert!(Offset::Int(-1) < Offset::Int(2));
        assert!(Offset::Str(Bytes::from_static(b"a")) < Offset::Str(Bytes::from_static(b"b")));
        for (kind, o) in [
            (LeafKind::Int64, Offset::Int(-42)),
            (LeafKind::String, Offset::Str(Bytes::from_static(b"0f-a"))),
            (
                LeafKind::Bytes,
                Offset::Bytes(Bytes::from_static(&[0, 255])),
            ),
        ] {
            assert_eq!(Offset::parse(kind, &o.to_string()), Ok(o));
        }
    }
}
