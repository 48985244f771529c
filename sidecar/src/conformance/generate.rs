//! Messages made from a stream of entropy bytes (a proptest vector or a fuzzer's input), shaped
//! by a descriptor but written the way no canonical encoder writes them: fields repeated and in
//! any order, message fields split into parts that merge, oneof members overriding each other,
//! unknown fields and groups, over-long varints, negative 32-bit values in five or ten bytes,
//! packed and unpacked lists. A small share of fields is broken on purpose (wrong wire type,
//! bad UTF-8, an invalid tenth varint byte, stray bytes), so both sides of "the decoder
//! rejects it" are exercised.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

/// Reads choices from bytes; past the end every choice is 0, so any input is a valid recipe.
pub struct Entropy<'a> {
    data: &'a [u8],
    pos: usize,
    /// How often (in percent) each place that can be broken is: 0 for most messages, so most
    /// decode; a few percent for the rest.
    faults: u8,
}

impl<'a> Entropy<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Entropy {
            data,
            pos: 0,
            faults: 0,
        }
    }

    /// Whether to break this place.
    pub fn fault(&mut self) -> bool {
        self.faults > 0 && self.chance(self.faults)
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let v = if n <= 256 {
            usize::from(self.byte())
        } else {
            usize::from(u16::from_le_bytes([self.byte(), self.byte()]))
        };
        v % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u8) -> bool {
        self.byte() % 100 < percent
    }

    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    /// A 64-bit value, biased towards the edges where encodings and orders break.
    pub fn interesting(&mut self) -> u64 {
        const EDGES: [u64; 14] = [
            0,
            1,
            2,
            127,
            128,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x1_0000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
            u64::MAX - 1,
            0xffff_ffff_8000_0000,
        ];
        match self.below(4) {
            0 => EDGES[self.below(EDGES.len())],
            1 => u64::from(self.byte()),
            2 => (self.u64() as i64 >> self.below(64)) as u64,
            _ => self.u64(),
        }
    }
}

/// How far message fields nest in generated inputs.
const MAX_DEPTH: usize = 4;

/// A message of type `desc`, as bytes. `focus` is a path of field numbers the generator
/// favours (at each level, often its field rather than a random one), so that deep paths see
/// as many values, repeats and merges as shallow ones.
pub fn message(
    e: &mut Entropy,
    desc: &MessageDescriptor,
    focus: &[u32],
    depth: usize,
    out: &mut Vec<u8>,
) {
    let fields: Vec<FieldDescriptor> = desc.fields().collect();
    if depth == 0 {
        e.faults = if e.chance(30) {
            1 + e.below(6) as u8
        } else {
            0
        };
    }
    let favoured = focus
        .split_first()
        .and_then(|(n, rest)| Some((desc.get_field(*n)?, rest)));
    let count = match (depth, &favoured) {
        (0, _) => 1 + e.below(10),
        (_, Some(_)) => 1 + e.below(5),
        _ => e.below(6),
    };
    // How strongly this message favours the focus: at the top, some messages not at all, so
    // the focused field is absent about as often as it is repeated; below, more strongly, so
    // that deep paths see values too.
    let bias = if depth == 0 {
        e.below(70)
    } else {
        30 + e.below(60)
    };
    for _ in 0..count {
        let roll = e.below(100);
        match roll {
            _ if roll < bias && favoured.is_some() => {
                if let Some((f, rest)) = &favoured {
                    known(e, f, rest, depth, out);
                }
            }
            0..=85 if !fields.is_empty() => {
                let f = &fields[e.below(fields.len())];
                known(e, f, &[], depth, out);
            }
            86..=97 => unknown(e, depth, out),
            _ => {}
        }
        if e.fault() && !fields.is_empty() {
            // A known field with the wrong wire type.
            let f = &fields[e.below(fields.len())];
            let wire = [0u8, 1, 2, 5][e.below(4)];
            key(f.number(), wire, out);
            raw_value(e, wire, out);
        }
        if e.fault() {
            out.push(e.byte());
        }
    }
}

fn known(e: &mut Entropy, f: &FieldDescriptor, focus: &[u32], depth: usize, out: &mut Vec<u8>) {
    let kind = f.kind();
    if let Kind::Message(inner) = &kind {
        let mut body = Vec::new();
        if depth < MAX_DEPTH {
            message(e, inner, focus, depth + 1, &mut body);
        }
        if f.is_group() {
            key(f.number(), 3, out);
            out.extend_from_slice(&body);
            key(f.number(), 4, out);
        } else {
            key(f.number(), 2, out);
            varint(body.len() as u64, out);
            out.extend_from_slice(&body);
        }
        return;
    }
    if f.is_list() && wire_of(&kind) != 2 && e.chance(50) {
        let mut body = Vec::new();
        for _ in 0..e.below(4) {
            scalar_value(e, &kind, &mut body);
        }
        key(f.number(), 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(&body);
        return;
    }
    key(f.number(), wire_of(&kind), out);
    scalar_value(e, &kind, out);
}

fn wire_of(kind: &Kind) -> u8 {
    match kind {
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => 1,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => 5,
        Kind::String | Kind::Bytes | Kind::Message(_) => 2,
        _ => 0,
    }
}

fn scalar_value(e: &mut Entropy, kind: &Kind, out: &mut Vec<u8>) {
    match wire_of(kind) {
        0 => {
            let v = e.interesting();
            let v = match kind {
                // Zigzag the edges too, so they land on both sides of 0.
                Kind::Sint64 if e.chance(50) => ((v as i64) << 1 ^ (v as i64) >> 63) as u64,
                Kind::Bool if e.chance(80) => v & 1,
                _ => v,
            };
            padded_varint(e, v, out);
        }
        1 => out.extend_from_slice(&e.interesting().to_le_bytes()),
        5 => out.extend_from_slice(&(e.interesting() as u32).to_le_bytes()),
        _ => {
            let text = text(e, matches!(kind, Kind::String));
            varint(text.len() as u64, out);
            out.extend_from_slice(&text);
        }
    }
}

/// Short strings that sort in interesting ways (a prefix, multi-byte characters), rarely
/// invalid UTF-8 for a string field.
fn text(e: &mut Entropy, utf8: bool) -> Vec<u8> {
    const PIECES: [&str; 8] = ["", "a", "b", "ab", "é", "z", "\u{10348}", "0"];
    let mut out = Vec::new();
    for _ in 0..e.below(4) {
        out.extend_from_slice(PIECES[e.below(PIECES.len())].as_bytes());
    }
    if !utf8 || e.fault() {
        for _ in 0..e.below(3) {
            out.push(e.byte());
        }
    }
    out
}

/// A field number no schema message uses, with a value of any wire type.
fn unknown(e: &mut Entropy, depth: usize, out: &mut Vec<u8>) {
    let number = [1000, 1001, 19_999, 536_870_911][e.below(4)];
    let wire = [0u8, 1, 2, 3, 5][e.below(5)];
    key(number, wire, out);
    if wire == 3 {
        // A group with unknown fields inside, nested a little.
        for _ in 0..e.below(3) {
            if depth < MAX_DEPTH && e.chance(30) {
                unknown(e, depth + 1, out);
            } else {
                key(7, 0, out);
                let v = e.interesting();
                padded_varint(e, v, out);
            }
        }
        // Rarely the wrong end tag.
        let end = if e.fault() { number + 1 } else { number };
        key(end, 4, out);
    } else {
        raw_value(e, wire, out);
    }
}

fn raw_value(e: &mut Entropy, wire: u8, out: &mut Vec<u8>) {
    match wire {
        0 => {
            let v = e.interesting();
            padded_varint(e, v, out);
        }
        1 => out.extend_from_slice(&e.u64().to_le_bytes()),
        5 => out.extend_from_slice(&(e.u64() as u32).to_le_bytes()),
        _ => {
            let body = text(e, false);
            varint(body.len() as u64, out);
            out.extend_from_slice(&body);
        }
    }
}

pub fn key(number: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(number) << 3 | u64::from(wire), out);
}

pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint, sometimes over-long (up to the ten bytes decoders accept), sometimes with an
/// eleventh byte or a tenth byte above 1 (both invalid).
fn padded_varint(e: &mut Entropy, v: u64, out: &mut Vec<u8>) {
    let mut bytes = Vec::with_capacity(11);
    varint(v, &mut bytes);
    if e.chance(15) {
        let extra = e.below(11 - bytes.len().min(10));
        if extra > 0 {
            let last = bytes.len() - 1;
            bytes[last] |= 0x80;
            bytes.extend(std::iter::repeat_n(0x80, extra - 1));
            bytes.push(0);
        }
    }
    if e.fault() {
        // Broken: the tenth byte too big, or no end at all.
        bytes.resize(9, 0xff);
        bytes.iter_mut().for_each(|b| *b |= 0x80);
        bytes.push(if e.chance(50) { 0x02 } else { 0x80 });
    }
    out.extend_from_slice(&bytes);
}
