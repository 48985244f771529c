//! What a full decoder makes of a message: `prost_reflect::DynamicMessage`, the reference the
//! sidecar's own wire readers are held to.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};

use crate::{offset::Offset, request};

/// The offset at `path` after a full decode of `bytes`: `Err` if the decoder rejects the
/// message, `Ok(None)` if the leaf has explicit presence and is not set. An absent message on
/// the path reads as its default instance, as generated code reads it.
pub fn offset(
    root: &MessageDescriptor,
    path: &[FieldDescriptor],
    bytes: &[u8],
) -> Result<Option<Offset>, prost::DecodeError> {
    let msg = DynamicMessage::decode(root.clone(), bytes)?;
    Ok(offset_in(&msg, path))
}

/// The offset at `path` in a decoded message.
pub fn offset_in(msg: &DynamicMessage, path: &[FieldDescriptor]) -> Option<Offset> {
    let (leaf, parents) = path.split_last()?;
    let mut cur = msg.clone();
    for f in parents {
        cur = match cur.get_field(f).as_message() {
            Some(m) => m.clone(),
            None => return None,
        };
    }
    if leaf.supports_presence() && !cur.has_field(leaf) {
        return None;
    }
    request::offset_of(&cur.get_field(leaf))
}

/// `msg` with the field at `path` set to `offset` the way generated code sets it: through the
/// existing messages on the path (created where absent), clearing other members of a oneof.
/// `None` if the value does not fit the field.
pub fn with_field(
    msg: &DynamicMessage,
    path: &[FieldDescriptor],
    offset: &Offset,
) -> Option<DynamicMessage> {
    let (leaf, parents) = path.split_last()?;
    let mut out = msg.clone();
    let mut cur = &mut out;
    for f in parents {
        cur = match cur.get_field_mut(f) {
            Value::Message(m) => m,
            _ => return None,
        };
    }
    cur.set_field(leaf, value_for(leaf, offset)?);
    Some(out)
}

fn value_for(field: &FieldDescriptor, offset: &Offset) -> Option<Value> {
    use prost_reflect::Kind;
    Some(match (field.kind(), offset) {
        (Kind::Int32 | Kind::Sint32 | Kind::Sfixed32, Offset::Int(n)) => {
            Value::I32(i32::try_from(*n).ok()?)
        }
        (Kind::Int64 | Kind::Sint64 | Kind::Sfixed64, Offset::Int(n)) => {
            Value::I64(i64::try_from(*n).ok()?)
        }
        (Kind::Uint32 | Kind::Fixed32, Offset::Int(n)) => Value::U32(u32::try_from(*n).ok()?),
        (Kind::Uint64 | Kind::Fixed64, Offset::Int(n)) => Value::U64(u64::try_from(*n).ok()?),
        (Kind::String, Offset::Str(b) | Offset::Bytes(b)) => {
            Value::String(String::from_utf8(b.to_vec()).ok()?)
        }
        (Kind::Bytes, Offset::Str(b) | Offset::Bytes(b)) => Value::Bytes(b.clone()),
        _ => return None,
    })
}

/// Whether two decoded messages mean the same: every field the same value, presence the same
/// where the field has presence, the same unknown fields. Internal bookkeeping (an implicit
/// field stored as set with its default, say) does not count.
pub fn same(a: &DynamicMessage, b: &DynamicMessage) -> Result<(), String> {
    for f in a.descriptor().fields() {
        if f.supports_presence() && a.has_field(&f) != b.has_field(&f) {
            return Err(format!(
                "{}: set {} vs {}",
                f.full_name(),
                a.has_field(&f),
                b.has_field(&f)
            ));
        }
        if !a.has_field(&f) && !b.has_field(&f) {
            // Both hold the default (for a message, its default instance, which may contain
            // itself: comparing it would never end).
            continue;
        }
        same_value(&a.get_field(&f), &b.get_field(&f))
            .map_err(|e| format!("{}: {e}", f.full_name()))?;
    }
    let unknown = |m: &DynamicMessage| {
        m.unknown_fields()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
    };
    if unknown(a) != unknown(b) {
        return Err(format!(
            "{}: unknown fields {:?} vs {:?}",
            a.descriptor().full_name(),
            unknown(a),
            unknown(b)
        ));
    }
    Ok(())
}

fn same_value(a: &Value, b: &Value) -> Result<(), String> {
    match (a, b) {
        (Value::Message(a), Value::Message(b)) => same(a, b),
        (Value::List(a), Value::List(b)) if a.len() == b.len() => {
            a.iter().zip(b).try_for_each(|(a, b)| same_value(a, b))
        }
        (Value::Map(a), Value::Map(b)) if a.len() == b.len() => {
            a.iter()
                .try_for_each(|(k, va): (&MapKey, &Value)| match b.get(k) {
                    Some(vb) => same_value(va, vb),
                    None => Err(format!("map key {k:?} missing")),
                })
        }
        // Floats compare by bits, so a NaN equals itself.
        (Value::F32(a), Value::F32(b)) if a.to_bits() == b.to_bits() => Ok(()),
        (Value::F64(a), Value::F64(b)) if a.to_bits() == b.to_bits() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{a:?} vs {b:?}")),
    }
}
