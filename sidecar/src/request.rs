//! The one request of a resumable call: decoded once per call (never per streamed message) to
//! derive the job id, to read the app's own resume value and to write ours on every resume.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Value};
use sha2::{Digest, Sha256};

use crate::{descriptors::ResumableMethod, offset::Offset};

pub fn decode(method: &ResumableMethod, bytes: &[u8]) -> Result<DynamicMessage, String> {
    DynamicMessage::decode(method.input.clone(), bytes)
        .map_err(|e| format!("request is not a valid {}: {e}", method.input.full_name()))
}

/// A human-readable rendering for the job hash (`request_json`).
pub fn to_json(msg: &DynamicMessage) -> String {
    serde_json::to_string(msg).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The value the app itself put in the resume field. With explicit presence that is any value
/// it set, 0 and "" included ("after 0" is not "from the start"); with implicit presence the
/// default cannot be told from "not set", so only a value other than the default counts.
pub fn resume_value(method: &ResumableMethod, msg: &DynamicMessage) -> Option<Offset> {
    resume_value_at(&method.resume_path, msg)
}

/// `resume_value` for the field at `resume_path`.
pub fn resume_value_at(resume_path: &[FieldDescriptor], msg: &DynamicMessage) -> Option<Offset> {
    let (leaf, parents) = resume_path.split_last()?;
    let mut cur = msg.clone();
    for f in parents {
        if !cur.has_field(f) {
            return None;
        }
        cur = cur.get_field(f).as_message()?.clone();
    }
    let explicit = leaf.supports_presence();
    if explicit && !cur.has_field(leaf) {
        return None;
    }
    let offset = offset_of(&cur.get_field(leaf))?;
    let is_default = match &offset {
        Offset::Int(n) => *n == 0,
        Offset::Str(b) | Offset::Bytes(b) => b.is_empty(),
    };
    (explicit || !is_default).then_some(offset)
}

/// A decoded integer, string or bytes value as an offset.
pub fn offset_of(value: &Value) -> Option<Offset> {
    Some(match value {
        Value::I32(n) => Offset::Int((*n).into()),
        Value::I64(n) => Offset::Int((*n).into()),
        Value::U32(n) => Offset::Int((*n).into()),
        Value::U64(n) => Offset::Int((*n).into()),
        Value::String(s) => Offset::Str(Bytes::from(s.clone())),
        Value::Bytes(b) => Offset::Bytes(b.clone()),
        _ => return None,
    })
}

/// The app's request with the resume field set to `offset`: the original bytes, untouched,
/// followed by one more occurrence of the path. A decoder merges an occurrence of a message
/// field into what came before (so every sibling the app set, at every level, stays) and takes
/// the last value of a scalar (so ours wins); a oneof member written last is the one set. The
/// value is always written, 0 included, so "after 0" reaches the server with explicit presence.
pub fn with_resume(
    resume_path: &[FieldDescriptor],
    original: &[u8],
    offset: &Offset,
) -> Result<Bytes, String> {
    let (leaf, parents) = resume_path.split_last().ok_or("empty resume path")?;
    let mut field = Vec::with_capacity(16);
    wire::scalar(leaf.number(), leaf.kind(), offset, &mut field).ok_or_else(|| {
        format!(
            "offset {offset} does not fit the resume field {} ({:?})",
            leaf.full_name(),
            leaf.kind()
        )
    })?;
    for parent in parents.iter().rev() {
        let mut outer = Vec::with_capacity(field.len() + 12);
        if parent.is_group() {
            wire::key(parent.number(), wire::START_GROUP, &mut outer);
            outer.extend_from_slice(&field);
            wire::key(parent.number(), wire::END_GROUP, &mut outer);
        } else {
            wire::key(parent.number(), wire::LEN, &mut outer);
            wire::varint(field.len() as u64, &mut outer);
            outer.extend_from_slice(&field);
        }
        field = outer;
    }
    let mut out = Vec::with_capacity(original.len() + field.len());
    out.extend_from_slice(original);
    out.extend_from_slice(&field);
    Ok(out.into())
}

/// Writing protobuf's wire format, for the one field a resume appends.
mod wire {
    use prost_reflect::Kind;

    use crate::offset::Offset;

    pub const LEN: u8 = 2;
    pub const START_GROUP: u8 = 3;
    pub const END_GROUP: u8 = 4;

    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn key(number: u32, wire: u8, out: &mut Vec<u8>) {
        varint(u64::from(number) << 3 | u64::from(wire), out);
    }

    /// Field `number` of `kind` holding `offset`; `None` if the value does not fit the kind
    /// (an integer out of its range, text that is not UTF-8 for a string, a mismatched kind).
    pub fn scalar(number: u32, kind: Kind, offset: &Offset, out: &mut Vec<u8>) -> Option<()> {
        match (kind, offset) {
            (Kind::Int32, Offset::Int(n)) => {
                // Negative int32 values are sign-extended to ten bytes, as every encoder does.
                let v = i32::try_from(*n).ok()?;
                key(number, 0, out);
                varint(i64::from(v) as u64, out);
            }
            (Kind::Int64, Offset::Int(n)) => {
                key(number, 0, out);
                varint(i64::try_from(*n).ok()? as u64, out);
            }
            (Kind::Uint32, Offset::Int(n)) => {
                key(number, 0, out);
                varint(u64::from(u32::try_from(*n).ok()?), out);
            }
            (Kind::Uint64, Offset::Int(n)) => {
                key(number, 0, out);
                varint(u64::try_from(*n).ok()?, out);
            }
            (Kind::Sint32, Offset::Int(n)) => {
                let v = i32::try_from(*n).ok()?;
                key(number, 0, out);
                varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out);
            }
            (Kind::Sint64, Offset::Int(n)) => {
                let v = i64::try_from(*n).ok()?;
                key(number, 0, out);
                varint(((v << 1) ^ (v >> 63)) as u64, out);
            }
            (Kind::Fixed32, Offset::Int(n)) => {
                let v = u32::try_from(*n).ok()?;
                key(number, 5, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (Kind::Sfixed32, Offset::Int(n)) => {
                let v = i32::try_from(*n).ok()?;
                key(number, 5, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (Kind::Fixed64, Offset::Int(n)) => {
                let v = u64::try_from(*n).ok()?;
                key(number, 1, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (Kind::Sfixed64, Offset::Int(n)) => {
                let v = i64::try_from(*n).ok()?;
                key(number, 1, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            (Kind::String, Offset::Str(b) | Offset::Bytes(b)) => {
                std::str::from_utf8(b).ok()?;
                key(number, LEN, out);
                varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            (Kind::Bytes, Offset::Str(b) | Offset::Bytes(b)) => {
                key(number, LEN, out);
                varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            _ => return None,
        }
        Some(())
    }
}

/// The job id of a call: a hash of (service, method, request with the resume field cleared) in a
/// canonical form, so field order, map order and an empty-vs-absent sub-message do not matter.
pub fn job_id(service: &str, method: &ResumableMethod, msg: &DynamicMessage) -> String {
    let mut cleared = msg.clone();
    if let Some((leaf, parents)) = method.resume_path.split_last() {
        let mut cur = Some(&mut cleared);
        for f in parents {
            cur = match cur {
                Some(m) if m.has_field(f) => match m.get_field_mut(f) {
                    Value::Message(inner) => Some(inner),
                    _ => None,
                },
                _ => None,
            };
        }
        if let Some(m) = cur {
            m.clear_field(leaf);
        }
    }
    let mut h = Sha256::new();
    h.update(service.as_bytes());
    h.update([0]);
    h.update(method.name.as_bytes());
    h.update([0]);
    h.update(canonical(&cleared));
    hex::encode(&h.finalize()[..16])
}

fn canonical(msg: &DynamicMessage) -> Vec<u8> {
    let mut fields: Vec<_> = msg.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    let mut out = Vec::new();
    for (f, v) in fields {
        let mut value = Vec::new();
        canonical_value(v, &mut value);
        if value.is_empty() {
            continue; // an empty sub-message or list counts as absent
        }
        out.extend_from_slice(&f.number().to_le_bytes());
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(&value);
    }
    out
}

fn canonical_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Value::I32(n) => fixed(2, &n.to_le_bytes(), out),
        Value::I64(n) => fixed(3, &n.to_le_bytes(), out),
        Value::U32(n) => fixed(4, &n.to_le_bytes(), out),
        Value::U64(n) => fixed(5, &n.to_le_bytes(), out),
        Value::F32(n) => fixed(6, &n.to_le_bytes(), out),
        Value::F64(n) => fixed(7, &n.to_le_bytes(), out),
        Value::EnumNumber(n) => fixed(8, &n.to_le_bytes(), out),
        Value::String(s) => len_prefixed(9, s.as_bytes(), out),
        Value::Bytes(b) => len_prefixed(10, b, out),
        Value::Message(m) => {
            let inner = canonical(m);
            if !inner.is_empty() {
                len_prefixed(11, &inner, out);
            }
        }
        Value::List(items) => {
            for item in items {
                let mut one = Vec::new();
                canonical_value(item, &mut one);
                len_prefixed(12, &one, out);
            }
        }
        Value::Map(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                let mut one = format!("{k:?}").into_bytes();
                one.push(0);
                canonical_value(v, &mut one);
                len_prefixed(13, &one, out);
            }
        }
    }
}

fn len_prefixed(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn fixed(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{ResumeMode, StreamConfig},
        descriptors::resolve,
    };
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, MapKey};
    use std::time::Duration;

    fn methods() -> Vec<ResumableMethod> {
        let pool = DescriptorPool::decode(reprise_proto::DEMO_DESCRIPTOR_SET).expect("pool");
        let s = |m: &str, o: &str, r: &str| StreamConfig {
            method: m.into(),
            offset_field: o.into(),
            resume_field: r.into(),
            resume_inclusive: false,
            resume: ResumeMode::OnRequest,
            on_app_cancel: crate::config::AppCancel::Restart,
            retry_codes: vec![14],
            max_outage: Duration::from_secs(1),
        };
        resolve(
            &pool,
            &[
                s("demo.v1.UserService/ListUsers", "user_id", "after_user_id"),
                s(
                    "demo.v1.EventService/StreamEvents",
                    "cursor.seq",
                    "start.after_seq",
                ),
            ],
        )
        .expect("resolve")
    }

    fn users_request(m: &ResumableMethod, after: &str, labels: &[(&str, &str)]) -> DynamicMessage {
        let mut msg = DynamicMessage::new(m.input.clone());
        msg.set_field_by_name("role", Value::String("admin".into()));
        if !after.is_empty() {
            msg.set_field_by_name("after_user_id", Value::String(after.into()));
        }
        let map = labels
            .iter()
            .map(|(k, v)| (MapKey::String((*k).into()), Value::String((*v).into())))
            .collect();
        msg.set_field_by_name("labels", Value::Map(map));
        msg
    }

    #[test]
    fn job_id_ignores_resume_field_and_map_order() {
        let m = &methods()[0];
        let a = users_request(m, "", &[("a", "1"), ("b", "2")]);
        let b = users_request(m, "some-id", &[("b", "2"), ("a", "1")]);
        assert_eq!(job_id("svc", m, &a), job_id("svc", m, &b));
        // Re-encoded through the wire in a different order, still the same id.
        let wire = decode(m, &b.encode_to_vec()).expect("decode");
        assert_eq!(job_id("svc", m, &a), job_id("svc", m, &wire));
        let other = users_request(m, "", &[("a", "1")]);
        assert_ne!(job_id("svc", m, &a), job_id("svc", m, &other));
        assert_ne!(job_id("svc", m, &a), job_id("other-svc", m, &a));
    }

    #[test]
    fn nested_resume_is_written_and_cleared_for_the_id() {
        let m = &methods()[1];
        let mut req = DynamicMessage::new(m.input.clone());
        req.set_field_by_name("topic", Value::String("t".into()));
        let id = job_id("s", m, &req);
        let bytes =
            with_resume(&m.resume_path, &req.encode_to_vec(), &Offset::Int(41)).expect("rewrite");
        let back = decode(m, &bytes).expect("decode");
        assert_eq!(resume_value(m, &back), Some(Offset::Int(41)));
        assert_eq!(
            back.get_field_by_name("topic").as_deref(),
            Some(&Value::String("t".into()))
        );
        assert_eq!(
            job_id("s", m, &back),
            id,
            "an empty start{{}} equals an absent one"
        );
        assert!(
            with_resume(&m.resume_path, &req.encode_to_vec(), &Offset::Int(-1)).is_err(),
            "u64 cannot hold -1"
        );
    }

    #[test]
    fn the_rewrite_keeps_siblings_in_the_resume_message_and_writes_an_explicit_zero() {
        let schema = crate::conformance::schema::Schema::new();
        let root = schema
            .pool
            .get_message_by_name("conformance.v3.Root")
            .expect("root");
        let path = |p: &str| crate::descriptors::field_path(&root, p, "test").expect("path");
        // The app's request: key { implicit_string: "x", opt_int64: 5 }, pad in mid.
        let mut req = DynamicMessage::new(root.clone());
        let key = req.get_field_by_name_mut("key").and_then(|v| {
            v.as_message_mut().map(|m| {
                m.set_field_by_name("implicit_string", Value::String("x".into()));
                m.set_field_by_name("opt_int64", Value::I64(5));
            })
        });
        assert!(key.is_some());
        let original = req.encode_to_vec();
        let explicit = path("key.opt_int64");
        assert_eq!(resume_value_at(&explicit, &req), Some(Offset::Int(5)));
        let out = with_resume(&explicit, &original, &Offset::Int(0)).expect("rewrite");
        assert!(
            out.starts_with(&original),
            "the app's bytes stay as they were"
        );
        let back = DynamicMessage::decode(root.clone(), out.as_ref()).expect("decode");
        let key = back.get_field_by_name("key").expect("key");
        let key = key.as_message().expect("message");
        assert_eq!(
            key.get_field_by_name("implicit_string").as_deref(),
            Some(&Value::String("x".into()))
        );
        assert!(
            key.has_field_by_name("opt_int64"),
            "after 0 is written, not dropped"
        );
        assert_eq!(resume_value_at(&explicit, &back), Some(Offset::Int(0)));
        // With implicit presence 0 cannot be told from "not set".
        let implicit = path("key.implicit_int64");
        let out = with_resume(&implicit, &original, &Offset::Int(0)).expect("rewrite");
        let back = DynamicMessage::decode(root, out.as_ref()).expect("decode");
        assert_eq!(resume_value_at(&implicit, &back), None);
    }
}
