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
///
/// This runs once per streamed message. The scan is compiled once per leaf encoding
/// (`Leaf`): it carries the raw value (a `u64`, `u32` or a range) and makes a `Found` once,
/// at the end, and its errors are one small value until they leave this function. Inlined
/// into the per-message loop: returned through memory, a `Found` (32 bytes) cost more than
/// the scan itself.
#[inline(always)]
pub fn find(msg: &[u8], path: &OffsetPath) -> Result<Option<Found>, WireError> {
    let numbers = &path.numbers[..];
    let found = match path.leaf {
        kind @ (LeafKind::Int32
        | LeafKind::Int64
        | LeafKind::UInt32
        | LeafKind::UInt64
        | LeafKind::SInt32
        | LeafKind::SInt64) => {
            scan::<Varint>(msg, numbers)?.map(|v| Found::Int(from_varint(kind, v)))
        }
        LeafKind::Fixed32 => scan::<Fixed32>(msg, numbers)?.map(|v| Found::Int(i128::from(v))),
        LeafKind::SFixed32 => {
            scan::<Fixed32>(msg, numbers)?.map(|v| Found::Int(i128::from(v as i32)))
        }
        LeafKind::Fixed64 => scan::<Fixed64>(msg, numbers)?.map(|v| Found::Int(i128::from(v))),
        LeafKind::SFixed64 => {
            scan::<Fixed64>(msg, numbers)?.map(|v| Found::Int(i128::from(v as i64)))
        }
        LeafKind::String => match scan::<Len>(msg, numbers)? {
            Some(range) => {
                // Only the value that wins is the offset, so only it must be text.
                std::str::from_utf8(&msg[range.clone()]).map_err(|_| WireError::Utf8)?;
                Some(Found::Str(range))
            }
            None => None,
        },
        LeafKind::Bytes => scan::<Len>(msg, numbers)?.map(Found::Bytes),
    };
    Ok(found)
}

/// An integer leaf's value from its varint, as its kind reads it.
fn from_varint(kind: LeafKind, v: u64) -> i128 {
    match kind {
        LeafKind::Int32 => i128::from(v as i32),
        LeafKind::Int64 => i128::from(v as i64),
        LeafKind::UInt32 => i128::from(v as u32),
        LeafKind::SInt32 | LeafKind::SInt64 => {
            let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
            if kind == LeafKind::SInt32 {
                i128::from(n as i32)
            } else {
                i128::from(n)
            }
        }
        _ => i128::from(v),
    }
}

/// Why a message cannot be read; one byte or two, so that the scan's results stay in
/// registers. Becomes a [`WireError`] when it leaves [`find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    TruncatedVarint,
    LongVarint,
    PastEnd,
    TruncatedFixed,
    FieldZero,
    InvalidWire,
    EndGroup,
    WireType { found: u8, expected: u8 },
}

impl From<Bad> for WireError {
    fn from(bad: Bad) -> WireError {
        match bad {
            Bad::TruncatedVarint => WireError::Malformed("truncated varint"),
            Bad::LongVarint => WireError::Malformed("varint longer than 10 bytes"),
            Bad::PastEnd => WireError::Malformed("length-delimited field runs past the end"),
            Bad::TruncatedFixed => WireError::Malformed("truncated fixed-width field"),
            Bad::FieldZero => WireError::Malformed("field number 0"),
            Bad::InvalidWire => WireError::Malformed("invalid wire type"),
            Bad::EndGroup => WireError::Malformed("mismatched end-group"),
            Bad::WireType { found, expected } => WireError::WireType { found, expected },
        }
    }
}

/// How a leaf's value is encoded: its wire type and how to read its raw value.
trait Leaf {
    type Raw;
    const WIRE: u8;
    fn read(buf: &[u8], pos: &mut usize) -> Result<Self::Raw, Bad>;
}

struct Varint;
struct Fixed32;
struct Fixed64;
/// Strings and bytes: where the value lies.
struct Len;

impl Leaf for Varint {
    type Raw = u64;
    const WIRE: u8 = 0;
    #[inline(always)]
    fn read(buf: &[u8], pos: &mut usize) -> Result<u64, Bad> {
        read_varint(buf, pos)
    }
}

impl Leaf for Fixed32 {
    type Raw = u32;
    const WIRE: u8 = 5;
    #[inline(always)]
    fn read(buf: &[u8], pos: &mut usize) -> Result<u32, Bad> {
        take::<4>(buf, pos).map(u32::from_le_bytes)
    }
}

impl Leaf for Fixed64 {
    type Raw = u64;
    const WIRE: u8 = 1;
    #[inline(always)]
    fn read(buf: &[u8], pos: &mut usize) -> Result<u64, Bad> {
        take::<8>(buf, pos).map(u64::from_le_bytes)
    }
}

impl Leaf for Len {
    type Raw = Range<usize>;
    const WIRE: u8 = 2;
    #[inline(always)]
    fn read(buf: &[u8], pos: &mut usize) -> Result<Range<usize>, Bad> {
        let len = read_len(buf, pos)?;
        let range = *pos..*pos + len;
        *pos += len;
        Ok(range)
    }
}

/// The leaf's last value along `path` in `msg` (protobuf's "last one wins"; occurrences of
/// an enclosing message merge, so every one of them is walked).
#[inline]
fn scan<L: Leaf>(msg: &[u8], path: &[u32]) -> Result<Option<L::Raw>, WireError> {
    let mut found = None;
    scan_fields::<L>(msg, 0, path, &mut found)?;
    Ok(found)
}

/// The fields from `pos` to the end of `buf`: a whole message, or the enclosing buffer cut
/// where an embedded message ends. Positions stay offsets from the start of the top-level
/// message, so a range found deep inside is valid at the top.
fn scan_fields<L: Leaf>(
    buf: &[u8],
    mut pos: usize,
    path: &[u32],
    found: &mut Option<L::Raw>,
) -> Result<(), Bad> {
    let Some((&want, rest)) = path.split_first() else {
        return Ok(());
    };
    let want = u64::from(want);
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let number = tag >> 3;
        let wire = (tag & 7) as u8;
        if number == want {
            if rest.is_empty() {
                expect_wire(wire, L::WIRE)?;
                *found = Some(L::read(buf, &mut pos)?);
            } else {
                expect_wire(wire, 2)?;
                let len = read_len(buf, &mut pos)?;
                let end = pos + len;
                scan_fields::<L>(&buf[..end], pos, rest, found)?;
                pos = end;
            }
            continue;
        }
        if number == 0 {
            return Err(Bad::FieldZero);
        }
        skip(buf, &mut pos, wire, number)?;
    }
    Ok(())
}

#[inline(always)]
fn expect_wire(found: u8, expected: u8) -> Result<(), Bad> {
    if found == expected {
        Ok(())
    } else {
        Err(Bad::WireType { found, expected })
    }
}

#[inline(always)]
fn take<const N: usize>(buf: &[u8], pos: &mut usize) -> Result<[u8; N], Bad> {
    let bytes: [u8; N] = buf
        .get(*pos..*pos + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(Bad::TruncatedFixed)?;
    *pos += N;
    Ok(bytes)
}

#[inline(always)]
fn read_len(buf: &[u8], pos: &mut usize) -> Result<usize, Bad> {
    let len = read_varint(buf, pos)? as usize;
    if buf.len() - *pos < len {
        return Err(Bad::PastEnd);
    }
    Ok(len)
}

#[inline(always)]
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Bad> {
    // Tags, lengths and small values are one byte: the common case, inline and without a loop.
    if let Some(&byte) = buf.get(*pos)
        && byte < 0x80
    {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    // Two bytes: sequence numbers up to 16383, the other common case.
    if let Some(&[b0, b1]) = buf.get(*pos..*pos + 2)
        && b1 < 0x80
    {
        *pos += 2;
        return Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7);
    }
    read_long_varint(buf, pos)
}

/// Varints of three bytes or more, out of line so the short paths stay small.
#[inline(never)]
fn read_long_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Bad> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(Bad::TruncatedVarint)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Bad::LongVarint)
}

#[inline(always)]
fn skip(buf: &[u8], pos: &mut usize, wire: u8, number: u64) -> Result<(), Bad> {
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
        3 => skip_group(buf, pos, number)?,
        _ => return Err(Bad::InvalidWire),
    }
    Ok(())
}

/// A group (deprecated, still valid): fields until its matching end-group tag.
#[inline(never)]
fn skip_group(buf: &[u8], pos: &mut usize, number: u64) -> Result<(), Bad> {
    loop {
        let tag = read_varint(buf, pos)?;
        let (n, w) = (tag >> 3, (tag & 7) as u8);
        if w == 4 {
            return if n == number {
                Ok(())
            } else {
                Err(Bad::EndGroup)
            };
        }
        skip(buf, pos, w, n)?;
    }
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
