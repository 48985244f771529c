//! Offsets: the ordering key read from each streamed message, without decoding the message.
//!
//! The hot path walks the protobuf wire format along a field path (`key.seq` → [1, 1]) and
//! skips everything else, so a message costs a few varint reads instead of a full dynamic
//! decode. Integer keys compare as numbers, string and bytes keys bytewise.
//!
//! What the walk returns is what a full decoder (`prost_reflect::DynamicMessage`) would read
//! at the path, for every message such a decoder accepts: the last occurrence of the leaf wins;
//! occurrences of an enclosing message merge; a later member of a oneof clears the path's
//! member; an absent leaf with implicit presence reads as its default (0, "" or empty), and so
//! does any leaf under an absent message. Only a leaf with explicit presence can be missing.
//! The walk checks what it reads (tags, lengths, varints, the leaf's wire type, UTF-8 of the
//! winning string, nesting depth) with the decoder's rules, so it never rejects a message the
//! decoder accepts; it does not look inside fields off the path, so a message broken only there
//! is forwarded and left to the app's own decoder. The differential tests in `conformance`
//! hold it to that.

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

    /// The type's name in a .proto file.
    pub fn name(self) -> &'static str {
        match self {
            LeafKind::Int32 => "int32",
            LeafKind::Int64 => "int64",
            LeafKind::UInt32 => "uint32",
            LeafKind::UInt64 => "uint64",
            LeafKind::SInt32 => "sint32",
            LeafKind::SInt64 => "sint64",
            LeafKind::Fixed32 => "fixed32",
            LeafKind::Fixed64 => "fixed64",
            LeafKind::SFixed32 => "sfixed32",
            LeafKind::SFixed64 => "sfixed64",
            LeafKind::String => "string",
            LeafKind::Bytes => "bytes",
        }
    }
}

/// Whether an absent leaf still has a value, as protobuf defines field presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A proto3 singular scalar without `optional` (editions: `field_presence = IMPLICIT`):
    /// its default is never written, so absent means 0, "" or empty.
    Implicit,
    /// proto2 `optional`/`required`, proto3 `optional`, a oneof member, editions `EXPLICIT`
    /// or `LEGACY_REQUIRED`: absent means "not set", which for an offset is "no offset".
    Explicit,
}

/// One field of a path, as the wire walk needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub number: u32,
    /// A message field encoded as a group (proto2 `group`, editions `DELIMITED`): its fields
    /// run until a matching end-group tag instead of for a length. Never set on the leaf.
    pub group: bool,
    /// The other members of this field's oneof. One of them on the wire after this field
    /// clears it, and with it everything found inside it.
    pub clears: Box<[u32]>,
}

impl Step {
    /// A length-delimited (or scalar) field outside any oneof.
    pub fn plain(number: u32) -> Step {
        Step {
            number,
            group: false,
            clears: Box::default(),
        }
    }
}

/// A field path resolved against the response descriptor: its steps from the outside in (the
/// last is the leaf), the leaf's type and its presence. Resolved once, at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetPath {
    pub steps: Box<[Step]>,
    pub leaf: LeafKind,
    pub presence: Presence,
    /// Some step is a group or in a oneof: the walk needs the checks for those.
    rich: bool,
}

impl OffsetPath {
    pub fn new(steps: Vec<Step>, leaf: LeafKind, presence: Presence) -> OffsetPath {
        let rich = steps.iter().any(|s| s.group || !s.clears.is_empty());
        OffsetPath {
            steps: steps.into(),
            leaf,
            presence,
            rich,
        }
    }

    /// A path of plain steps (no groups, no oneofs) to a leaf of `leaf`'s kind.
    pub fn plain(numbers: &[u32], leaf: LeafKind, presence: Presence) -> OffsetPath {
        OffsetPath::new(
            numbers.iter().copied().map(Step::plain).collect(),
            leaf,
            presence,
        )
    }

    /// The field numbers from the outside in.
    pub fn numbers(&self) -> Vec<u32> {
        self.steps.iter().map(|s| s.number).collect()
    }
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
    /// The job's stored offset: its text (`None` or "" when nothing was stored) and message
    /// count. The text of an empty string or bytes offset is "" too, so a job that forwarded
    /// messages and stored "" holds the empty offset; one that forwarded none holds no offset.
    pub fn from_stored(
        kind: LeafKind,
        text: Option<&str>,
        messages: u64,
    ) -> Result<Option<Offset>, String> {
        match text {
            Some(text) if !text.is_empty() => Offset::parse(kind, text).map(Some),
            _ if messages == 0 => Ok(None),
            _ => match kind {
                LeafKind::String => Ok(Some(Offset::Str(Bytes::new()))),
                LeafKind::Bytes => Ok(Some(Offset::Bytes(Bytes::new()))),
                _ => Ok(None),
            },
        }
    }

    /// The offset just below this one, where an inclusive resume value `v` ("from v") means
    /// "after it": `v - 1` for integers; strings and bytes have no such neighbour.
    pub fn predecessor(&self) -> Option<Offset> {
        match self {
            Offset::Int(n) => Some(Offset::Int(n - 1)),
            Offset::Str(_) | Offset::Bytes(_) => None,
        }
    }

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

/// Reads the offset at `path` from an encoded message. `Ok(None)`: the leaf has explicit
/// presence and is not set. Protobuf's "last one wins" holds: a repeated occurrence overrides
/// an earlier one.
pub fn extract(msg: &Bytes, path: &OffsetPath) -> Result<Option<Offset>, WireError> {
    Ok(find(msg, path)?.map(|f| f.to_offset(msg)))
}

/// How deep messages and groups may nest, counted as prost counts it: a decoder rejects a
/// message nested deeper. The walk rejects groups nested deeper (so its recursion stays
/// bounded); on a path with oneofs or groups it counts the messages along the path too.
pub const RECURSION_LIMIT: u32 = 100;

/// `extract` without taking anything out of `msg`: where the offset is. An absent leaf with
/// implicit presence is its default: `Int(0)`, or an empty range.
///
/// This runs once per streamed message. The scan is compiled once per leaf encoding
/// (`Leaf`): it carries the raw value (a `u64`, `u32` or a range) and makes a `Found` once,
/// at the end, and its errors are one small value until they leave this function. Inlined
/// into the per-message loop: returned through memory, a `Found` (32 bytes) cost more than
/// the scan itself.
#[inline(always)]
pub fn find(msg: &[u8], path: &OffsetPath) -> Result<Option<Found>, WireError> {
    let found = if path.rich {
        read::<true>(msg, path)?
    } else {
        read::<false>(msg, path)?
    };
    match found {
        Some(found) => Ok(Some(found)),
        None => Ok(absent(path)),
    }
}

/// `find`'s walk, compiled once per leaf encoding and once with and without the checks for
/// oneofs and groups (`RICH`): most paths have neither, and with those checks on every
/// skipped field `cargo bench --bench filter` measured `find` a quarter slower on them.
#[inline(always)]
fn read<const RICH: bool>(msg: &[u8], path: &OffsetPath) -> Result<Option<Found>, WireError> {
    let steps = &path.steps[..];
    Ok(match path.leaf {
        kind @ (LeafKind::Int32
        | LeafKind::Int64
        | LeafKind::UInt32
        | LeafKind::UInt64
        | LeafKind::SInt32
        | LeafKind::SInt64) => {
            scan::<Varint, RICH>(msg, steps)?.map(|v| Found::Int(from_varint(kind, v)))
        }
        LeafKind::Fixed32 => scan::<Fixed32, RICH>(msg, steps)?.map(|v| Found::Int(i128::from(v))),
        LeafKind::SFixed32 => {
            scan::<Fixed32, RICH>(msg, steps)?.map(|v| Found::Int(i128::from(v as i32)))
        }
        LeafKind::Fixed64 => scan::<Fixed64, RICH>(msg, steps)?.map(|v| Found::Int(i128::from(v))),
        LeafKind::SFixed64 => {
            scan::<Fixed64, RICH>(msg, steps)?.map(|v| Found::Int(i128::from(v as i64)))
        }
        LeafKind::String => match scan::<Len, RICH>(msg, steps)? {
            Some(range) => {
                // Only the value that wins is the offset, so only it must be text.
                std::str::from_utf8(&msg[range.clone()]).map_err(|_| WireError::Utf8)?;
                Some(Found::Str(range))
            }
            None => None,
        },
        LeafKind::Bytes => scan::<Len, RICH>(msg, steps)?.map(Found::Bytes),
    })
}

/// The leaf is not on the wire (or a oneof member cleared it): with implicit presence, the
/// default a decoder reads instead; with explicit presence, no offset. Off the per-message path.
#[cold]
fn absent(path: &OffsetPath) -> Option<Found> {
    match (path.presence, path.leaf) {
        (Presence::Explicit, _) => None,
        (Presence::Implicit, LeafKind::String) => Some(Found::Str(0..0)),
        (Presence::Implicit, LeafKind::Bytes) => Some(Found::Bytes(0..0)),
        (Presence::Implicit, _) => Some(Found::Int(0)),
    }
}

/// An integer leaf's value from its varint, as its kind reads it (as prost does: the 32-bit
/// kinds keep the low 32 bits, and `sint32` unzigzags those, not the whole varint).
fn from_varint(kind: LeafKind, v: u64) -> i128 {
    match kind {
        LeafKind::Int32 => i128::from(v as i32),
        LeafKind::Int64 => i128::from(v as i64),
        LeafKind::UInt32 => i128::from(v as u32),
        LeafKind::SInt32 => {
            let v = v as u32;
            i128::from(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        LeafKind::SInt64 => i128::from(((v >> 1) as i64) ^ -((v & 1) as i64)),
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
    BigTag,
    InvalidWire,
    EndGroup,
    OpenGroup,
    TooDeep,
    WireType { found: u8, expected: u8 },
}

impl From<Bad> for WireError {
    #[cold]
    fn from(bad: Bad) -> WireError {
        match bad {
            Bad::TruncatedVarint => WireError::Malformed("truncated varint"),
            Bad::LongVarint => WireError::Malformed("varint longer than 64 bits"),
            Bad::PastEnd => WireError::Malformed("length-delimited field runs past the end"),
            Bad::TruncatedFixed => WireError::Malformed("truncated fixed-width field"),
            Bad::FieldZero => WireError::Malformed("field number 0"),
            Bad::BigTag => WireError::Malformed("tag above 32 bits"),
            Bad::InvalidWire => WireError::Malformed("invalid wire type"),
            Bad::EndGroup => WireError::Malformed("end-group tag without its group"),
            Bad::OpenGroup => WireError::Malformed("group without its end-group tag"),
            Bad::TooDeep => WireError::Malformed("messages nested more than 100 deep"),
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

/// Group (wire types 3 and 4) and length-delimited wire types.
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const LEN: u8 = 2;

/// The leaf's last value along `steps` in `msg`, `None` if it is not there (protobuf's "last
/// one wins"; occurrences of an enclosing message merge, so every one of them is walked).
#[inline]
fn scan<L: Leaf, const RICH: bool>(
    msg: &[u8],
    steps: &[Step],
) -> Result<Option<L::Raw>, WireError> {
    let mut found = None;
    if RICH {
        scan_fields::<L>(msg, 0, steps, 0, RECURSION_LIMIT, &mut found)?;
    } else {
        scan_plain::<L>(msg, 0, steps, &mut found)?;
    }
    Ok(found)
}

/// The walk of a path without groups and oneofs: the fields from `pos` to the end of `buf` (a
/// whole message, or the enclosing buffer cut where an embedded message ends). Positions stay
/// offsets from the start of the top-level message, so a range found deep inside is valid at
/// the top. It recurses only along the path (as deep as the config's field path), and gives
/// unknown groups prost's whole nesting budget wherever they start: it may accept a message
/// nested past prost's limit, never reject one prost accepts, and it carries no depth (the
/// filter ran 3 % fewer instructions without it, under callgrind).
fn scan_plain<L: Leaf>(
    buf: &[u8],
    mut pos: usize,
    steps: &[Step],
    found: &mut Option<L::Raw>,
) -> Result<(), Bad> {
    let Some((step, rest)) = steps.split_first() else {
        return Ok(());
    };
    let want = u64::from(step.number);
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let number = tag >> 3;
        let wire = (tag & 7) as u8;
        if number == want {
            if rest.is_empty() {
                expect_wire(wire, L::WIRE)?;
                *found = Some(L::read(buf, &mut pos)?);
            } else {
                expect_wire(wire, LEN)?;
                let len = read_len(buf, &mut pos)?;
                let end = pos + len;
                scan_plain::<L>(&buf[..end], pos, rest, found)?;
                pos = end;
            }
            continue;
        }
        if tag.wrapping_sub(8) > u64::from(u32::MAX) - 8 {
            return Err(bad_key(tag));
        }
        // A stray end-group tag is an error here too: `skip` refuses wire type 4.
        skip(buf, &mut pos, wire, number, RECURSION_LIMIT)?;
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

/// The walk of any path: the fields from `pos` to the end of `buf`, or, inside a group on the
/// path (`group` is its field number, 0 outside one), to its end-group tag; a member of the
/// step's oneof clears what was found. Returns the position after what was walked.
fn scan_fields<L: Leaf>(
    buf: &[u8],
    mut pos: usize,
    steps: &[Step],
    group: u64,
    depth: u32,
    found: &mut Option<L::Raw>,
) -> Result<usize, Bad> {
    let Some((step, rest)) = steps.split_first() else {
        return Ok(pos);
    };
    let want = u64::from(step.number);
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let number = tag >> 3;
        let wire = (tag & 7) as u8;
        if number == want {
            if rest.is_empty() {
                if wire != L::WIRE {
                    return group_end(wire, number, group, L::WIRE, pos);
                }
                *found = Some(L::read(buf, &mut pos)?);
            } else if !step.group {
                if wire != LEN {
                    return group_end(wire, number, group, LEN, pos);
                }
                let len = read_len(buf, &mut pos)?;
                let end = pos + len;
                scan_fields::<L>(&buf[..end], pos, rest, 0, enter(depth)?, found)?;
                pos = end;
            } else {
                if wire != START_GROUP {
                    return group_end(wire, number, group, START_GROUP, pos);
                }
                pos = scan_fields::<L>(buf, pos, rest, number, enter(depth)?, found)?;
            }
            continue;
        }
        // Off the path. A decoder rejects field 0 and keys above 32 bits first: one compare
        // for both, since a valid key lies in 8..=u32::MAX.
        if tag.wrapping_sub(8) > u64::from(u32::MAX) - 8 {
            return Err(bad_key(tag));
        }
        if wire == END_GROUP {
            return if number == group && group != 0 {
                Ok(pos)
            } else {
                Err(Bad::EndGroup)
            };
        }
        if step.clears.contains(&(number as u32)) {
            *found = None;
        }
        skip(buf, &mut pos, wire, number, depth)?;
    }
    if group != 0 {
        return Err(Bad::OpenGroup);
    }
    Ok(pos)
}

#[cold]
fn bad_key(tag: u64) -> Bad {
    if tag < 8 { Bad::FieldZero } else { Bad::BigTag }
}

/// The path's field with another wire type than its own: the end of the group being walked
/// when it is that group's end tag (a group's inner field may share its number), else an error.
#[cold]
fn group_end(wire: u8, number: u64, group: u64, expected: u8, pos: usize) -> Result<usize, Bad> {
    if wire == END_GROUP && number == group && group != 0 {
        Ok(pos)
    } else {
        Err(Bad::WireType {
            found: wire,
            expected,
        })
    }
}

/// One level deeper, if a decoder allows it.
#[inline(always)]
fn enter(depth: u32) -> Result<u32, Bad> {
    depth.checked_sub(1).ok_or(Bad::TooDeep)
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
    let len = read_varint(buf, pos)?;
    if ((buf.len() - *pos) as u64) < len {
        return Err(Bad::PastEnd);
    }
    Ok(len as usize)
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

/// Varints of three bytes or more, out of line so the short paths stay small. Up to ten bytes
/// (over-long encodings of small values are valid); the tenth may only hold bit 63, as
/// protobuf's decoders require.
#[inline(never)]
fn read_long_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Bad> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *buf.get(*pos).ok_or(Bad::TruncatedVarint)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    // The tenth byte: bit 63 only, and no continuation.
    let byte = *buf.get(*pos).ok_or(Bad::TruncatedVarint)?;
    *pos += 1;
    if byte > 1 {
        return Err(Bad::LongVarint);
    }
    Ok(value | u64::from(byte) << 63)
}

/// Skips one field's value; `depth` is the nesting a decoder still allows for a group.
#[inline(always)]
fn skip(buf: &[u8], pos: &mut usize, wire: u8, number: u64, depth: u32) -> Result<(), Bad> {
    match wire {
        0 => {
            read_varint(buf, pos)?;
        }
        1 => {
            take::<8>(buf, pos)?;
        }
        LEN => {
            let len = read_len(buf, pos)?;
            *pos += len;
        }
        5 => {
            take::<4>(buf, pos)?;
        }
        START_GROUP => skip_group(buf, pos, number, depth)?,
        _ => return Err(Bad::InvalidWire),
    }
    Ok(())
}

/// A group (deprecated, still valid): fields until its matching end-group tag.
#[inline(never)]
fn skip_group(buf: &[u8], pos: &mut usize, number: u64, depth: u32) -> Result<(), Bad> {
    let depth = enter(depth)?;
    loop {
        let tag = read_varint(buf, pos)?;
        if tag.wrapping_sub(8) > u64::from(u32::MAX) - 8 {
            return Err(bad_key(tag));
        }
        let (n, w) = (tag >> 3, (tag & 7) as u8);
        if w == END_GROUP {
            return if n == number {
                Ok(())
            } else {
                Err(Bad::EndGroup)
            };
        }
        skip(buf, pos, w, n, depth)?;
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
        OffsetPath::plain(numbers, leaf, Presence::Explicit)
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
        // Ten bytes: the last may carry bit 63 only (prost and protobuf-go reject more).
        let mut max = [0xff; 10];
        max[9] = 0x01;
        let mut pos = 0;
        assert_eq!(read_varint(&max, &mut pos), Ok(u64::MAX));
        max[9] = 0x02;
        let mut pos = 0;
        assert_eq!(read_varint(&max, &mut pos), Err(Bad::LongVarint));
        // Over-long but valid: 1 in ten bytes.
        let mut long = [0x80; 10];
        long[0] = 0x81;
        long[9] = 0x00;
        let mut pos = 0;
        assert_eq!(read_varint(&long, &mut pos), Ok(1));
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

    fn offset_of(bytes: &[u8], p: &OffsetPath) -> Result<Option<Offset>, WireError> {
        extract(&Bytes::copy_from_slice(bytes), p)
    }

    #[test]
    fn an_absent_implicit_leaf_is_its_default_and_an_absent_explicit_one_is_none() {
        let other = [0x12, 0x01, b'x']; // field 2 only
        for (kind, default) in [
            (LeafKind::Int32, Offset::Int(0)),
            (LeafKind::SFixed64, Offset::Int(0)),
            (LeafKind::String, Offset::Str(Bytes::new())),
            (LeafKind::Bytes, Offset::Bytes(Bytes::new())),
        ] {
            let implicit = OffsetPath::plain(&[1], kind, Presence::Implicit);
            assert_eq!(offset_of(&other, &implicit), Ok(Some(default.clone())));
            assert_eq!(offset_of(&[], &implicit), Ok(Some(default.clone())));
            // Under an absent message: the default instance's default.
            let nested = OffsetPath::plain(&[3, 1], kind, Presence::Implicit);
            assert_eq!(offset_of(&other, &nested), Ok(Some(default)));
            let explicit = OffsetPath::plain(&[1], kind, Presence::Explicit);
            assert_eq!(offset_of(&other, &explicit), Ok(None));
        }
    }

    /// Each value encoded as its kind's encoder writes it.
    fn encoded(kind: LeafKind, v: i128) -> Vec<u8> {
        let mut m = Vec::new();
        let mut raw = Vec::new();
        let wire = match kind {
            LeafKind::Int32 | LeafKind::Int64 => {
                varint(v as i64 as u64, &mut raw);
                0
            }
            LeafKind::UInt32 | LeafKind::UInt64 => {
                varint(v as u64, &mut raw);
                0
            }
            LeafKind::SInt32 | LeafKind::SInt64 => {
                let n = v as i64;
                varint(((n << 1) ^ (n >> 63)) as u64, &mut raw);
                0
            }
            LeafKind::Fixed32 | LeafKind::SFixed32 => {
                raw.extend_from_slice(&(v as u32).to_le_bytes());
                5
            }
            _ => {
                raw.extend_from_slice(&(v as u64).to_le_bytes());
                1
            }
        };
        field(1, wire, &raw, &mut m);
        m
    }

    #[test]
    fn signed_offsets_order_across_zero_and_unsigned_ones_above_two_to_the_63() {
        let signed: [(LeafKind, &[i128]); 5] = [
            (
                LeafKind::Int32,
                &[i32::MIN as i128, -2, -1, 0, 1, i32::MAX as i128],
            ),
            (
                LeafKind::SInt32,
                &[i32::MIN as i128, -1, 0, 1, i32::MAX as i128],
            ),
            (
                LeafKind::SInt64,
                &[i64::MIN as i128, -1, 0, 1, i64::MAX as i128],
            ),
            (
                LeafKind::SFixed64,
                &[i64::MIN as i128, -1, 0, 1, i64::MAX as i128],
            ),
            (
                LeafKind::Int64,
                &[i64::MIN as i128, -1, 0, 1, i64::MAX as i128],
            ),
        ];
        let unsigned: [(LeafKind, &[i128]); 2] = [
            (
                LeafKind::UInt64,
                &[0, 1, 1 << 63, (1 << 63) + 1, u64::MAX as i128],
            ),
            (LeafKind::Fixed64, &[0, 1 << 62, 1 << 63, u64::MAX as i128]),
        ];
        for (kind, values) in signed.iter().chain(&unsigned) {
            let p = OffsetPath::plain(&[1], *kind, Presence::Implicit);
            let read: Vec<Offset> = values
                .iter()
                .map(|&v| {
                    let got = offset_of(&encoded(*kind, v), &p)
                        .expect("valid")
                        .expect("set");
                    assert_eq!(got, Offset::Int(v), "{kind:?} {v}");
                    got
                })
                .collect();
            assert!(read.windows(2).all(|w| w[0] < w[1]), "{kind:?}: {read:?}");
        }
        // A negative int32 is ten bytes on the wire, as every encoder writes it.
        assert_eq!(encoded(LeafKind::Int32, -1).len(), 1 + 10);
    }

    #[test]
    fn sint32_unzigzags_the_low_32_bits_as_decoders_do() {
        // An over-long sint32 whose varint has bit 32 set: prost keeps the low 32 bits (0),
        // then unzigzags (0); unzigzagging all 64 bits first would give i32::MIN.
        let mut m = Vec::new();
        let mut v = Vec::new();
        varint(1 << 32, &mut v);
        field(1, 0, &v, &mut m);
        let p = OffsetPath::plain(&[1], LeafKind::SInt32, Presence::Implicit);
        assert_eq!(offset_of(&m, &p), Ok(Some(Offset::Int(0))));
    }

    #[test]
    fn a_later_oneof_member_clears_the_path_and_a_later_occurrence_sets_it_again() {
        // message { oneof o { Cursor key = 1; string other = 2; } }, Cursor { uint64 seq = 1 }
        let p = OffsetPath::new(
            vec![
                Step {
                    number: 1,
                    group: false,
                    clears: vec![2].into(),
                },
                Step::plain(1),
            ],
            LeafKind::UInt64,
            Presence::Implicit,
        );
        let (mut key7, mut key9) = (Vec::new(), Vec::new());
        field(1, 0, &[7], &mut key7);
        field(1, 0, &[9], &mut key9);
        let mut m = Vec::new();
        field(1, 2, &key7, &mut m);
        field(2, 2, b"x", &mut m);
        // key was cleared: its default instance, seq 0.
        assert_eq!(offset_of(&m, &p), Ok(Some(Offset::Int(0))));
        field(1, 2, &key9, &mut m);
        assert_eq!(offset_of(&m, &p), Ok(Some(Offset::Int(9))));
        // The leaf itself in a oneof, with explicit presence: cleared means no offset.
        let leaf = OffsetPath::new(
            vec![Step {
                number: 1,
                group: false,
                clears: vec![2].into(),
            }],
            LeafKind::Int64,
            Presence::Explicit,
        );
        let mut m = Vec::new();
        field(1, 0, &[5], &mut m);
        field(2, 2, b"x", &mut m);
        assert_eq!(offset_of(&m, &leaf), Ok(None));
    }

    #[test]
    fn a_path_through_a_group_reads_until_its_end_tag() {
        // proto2: optional group Grp = 1 { optional int64 seq = 1; }, and merges of it.
        let p = OffsetPath::new(
            vec![
                Step {
                    number: 1,
                    group: true,
                    clears: Box::default(),
                },
                Step::plain(1),
            ],
            LeafKind::Int64,
            Presence::Explicit,
        );
        // start(1) seq=5 end(1), field 2, start(1) end(1): the second part keeps seq 5.
        let m = [0x0b, 0x08, 0x05, 0x0c, 0x10, 0x01, 0x0b, 0x0c];
        assert_eq!(offset_of(&m, &p), Ok(Some(Offset::Int(5))));
        // Unterminated: an error, not a guess.
        assert!(offset_of(&m[..3], &p).is_err());
        // A length-delimited occurrence of a group field is the wrong wire type.
        assert!(offset_of(&[0x0a, 0x02, 0x08, 0x05], &p).is_err());
    }

    #[test]
    fn nesting_beyond_the_decoders_limit_is_an_error_not_a_crash() {
        // 200,000 nested unknown groups (200 KB): walked recursively without a bound, this
        // overflowed the stack and aborted the process.
        let mut m = vec![0x08, 0x05];
        m.extend(std::iter::repeat_n(0x13, 200_000));
        let p = OffsetPath::plain(&[1], LeafKind::Int64, Presence::Explicit);
        assert!(matches!(offset_of(&m, &p), Err(WireError::Malformed(_))));
        // 99 nested groups under the top level are fine, as they are for prost.
        let mut ok = vec![0x08, 0x05];
        ok.extend(std::iter::repeat_n(0x13, 99));
        ok.extend(std::iter::repeat_n(0x14, 99));
        assert_eq!(offset_of(&ok, &p), Ok(Some(Offset::Int(5))));
    }

    #[test]
    fn keys_above_32_bits_and_stray_end_tags_are_errors() {
        let p = OffsetPath::plain(&[1], LeafKind::Int64, Presence::Explicit);
        let mut big = Vec::new();
        varint(1 << 35, &mut big);
        big.push(0);
        assert!(offset_of(&big, &p).is_err());
        assert!(offset_of(&[0x14], &p).is_err(), "end-group without a group");
    }
}
