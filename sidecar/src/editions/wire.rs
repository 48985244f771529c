use super::MAX_DEPTH;

#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Len(&'a [u8]),
    /// Fixed-width or group: never a descriptor field this module reads, only copied.
    Other,
}

#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// The whole record, key included, to copy it unchanged.
    pub raw: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn bytes(&self) -> Result<&'a [u8], String> {
        match self.value {
            Value::Len(bytes) => Ok(bytes),
            _ => Err(format!("field {} is not length-delimited", self.number)),
        }
    }

    pub fn varint(&self) -> Result<u64, String> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(format!("field {} is not a varint", self.number)),
        }
    }
}

/// Splits one message into its records, checking the whole of it.
pub fn parse(buf: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let (number, wire_type) = key(buf, &mut pos)?;
        let value = match wire_type {
            0 => Value::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = varint(buf, &mut pos)?;
                Value::Len(take(buf, &mut pos, len)?)
            }
            _ => {
                skip(buf, &mut pos, number, wire_type, 0)?;
                Value::Other
            }
        };
        let raw = buf
            .get(start..pos)
            .ok_or_else(|| format!("bad record at byte {start}"))?;
        records.push(Record { number, value, raw });
    }
    Ok(records)
}

fn key(buf: &[u8], pos: &mut usize) -> Result<(u32, u8), String> {
    let at = *pos;
    let key = varint(buf, pos)?;
    let key = u32::try_from(key).map_err(|_| format!("invalid key at byte {at}"))?;
    if key >> 3 == 0 {
        return Err(format!("field number 0 at byte {at}"));
    }
    Ok((key >> 3, (key & 7) as u8))
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let start = *pos;
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| format!("truncated varint at byte {start}"))?;
        *pos += 1;
        if i == 9 && byte > 1 {
            return Err(format!("varint at byte {start} overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(format!("varint at byte {start} is longer than 10 bytes"))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], String> {
    let start = *pos;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= buf.len())
        .ok_or_else(|| {
            format!(
                "truncated: {len} bytes announced at byte {start}, {} left",
                buf.len() - start.min(buf.len())
            )
        })?;
    *pos = end;
    buf.get(start..end)
        .ok_or_else(|| format!("truncated at byte {start}"))
}

/// Skips a value this module never reads; groups only occur as unknown fields here.
fn skip(
    buf: &[u8],
    pos: &mut usize,
    number: u32,
    wire_type: u8,
    depth: usize,
) -> Result<(), String> {
    match wire_type {
        0 => varint(buf, pos).map(drop),
        1 => take(buf, pos, 8).map(drop),
        2 => {
            let len = varint(buf, pos)?;
            take(buf, pos, len).map(drop)
        }
        5 => take(buf, pos, 4).map(drop),
        3 => {
            if depth >= MAX_DEPTH {
                return Err(format!("groups nest deeper than {MAX_DEPTH} levels"));
            }
            loop {
                let at = *pos;
                if at >= buf.len() {
                    return Err(format!("group {number} is not terminated"));
                }
                let (inner, inner_type) = key(buf, pos)?;
                if inner_type == 4 {
                    if inner == number {
                        return Ok(());
                    }
                    return Err(format!(
                        "end of group {inner} at byte {at} inside group {number}"
                    ));
                }
                skip(buf, pos, inner, inner_type, depth + 1)?;
            }
        }
        4 => Err(format!("end of group {number} without a start")),
        _ => Err(format!("invalid wire type {wire_type} for field {number}")),
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

pub fn put_len(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

pub fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    put_key(out, number, 0);
    put_varint(out, value);
}
