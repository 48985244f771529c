//! The one request of a resumable call: decoded once per call (never per streamed message) to
//! derive the job id, to read the app's own resume value and to write ours on every resume.

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, Value};
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

/// The value the app itself put in the resume field, if not the default.
pub fn resume_value(method: &ResumableMethod, msg: &DynamicMessage) -> Option<Offset> {
    let (leaf, parents) = method.resume_path.split_last()?;
    let mut cur = msg.clone();
    for f in parents {
        if !cur.has_field(f) {
            return None;
        }
        cur = cur.get_field(f).as_message()?.clone();
    }
    if !cur.has_field(leaf) {
        return None;
    }
    match cur.get_field(leaf).as_ref() {
        Value::I32(n) if *n != 0 => Some(Offset::Int((*n).into())),
        Value::I64(n) if *n != 0 => Some(Offset::Int((*n).into())),
        Value::U32(n) if *n != 0 => Some(Offset::Int((*n).into())),
        Value::U64(n) if *n != 0 => Some(Offset::Int((*n).into())),
        Value::String(s) if !s.is_empty() => Some(Offset::Str(Bytes::from(s.clone()))),
        Value::Bytes(b) if !b.is_empty() => Some(Offset::Bytes(b.clone())),
        _ => None,
    }
}

/// The request with the resume field set to `offset`, encoded; every other field unchanged.
pub fn with_resume(
    method: &ResumableMethod,
    msg: &DynamicMessage,
    offset: &Offset,
) -> Result<Bytes, String> {
    let mut msg = msg.clone();
    let (leaf, parents) = method.resume_path.split_last().ok_or("empty resume path")?;
    let mut cur = &mut msg;
    for f in parents {
        cur = match cur.get_field_mut(f) {
            Value::Message(m) => m,
            _ => return Err(format!("{} is not a message", f.full_name())),
        };
    }
    let value = leaf_value(leaf.kind(), offset).ok_or_else(|| {
        format!(
            "offset {offset} does not fit the resume field {} ({:?})",
            method.resume_field,
            leaf.kind()
        )
    })?;
    cur.set_field(leaf, value);
    Ok(msg.encode_to_vec().into())
}

fn leaf_value(kind: Kind, offset: &Offset) -> Option<Value> {
    Some(match (kind, offset) {
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
    use prost_reflect::{DescriptorPool, MapKey};
    use std::time::Duration;

    fn methods() -> Vec<ResumableMethod> {
        let pool = DescriptorPool::decode(reprise_proto::DEMO_DESCRIPTOR_SET).expect("pool");
        let s = |m: &str, o: &str, r: &str| StreamConfig {
            method: m.into(),
            offset_field: o.into(),
            resume_field: r.into(),
            resume: ResumeMode::OnRequest,
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
        let bytes = with_resume(m, &req, &Offset::Int(41)).expect("rewrite");
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
            with_resume(m, &req, &Offset::Int(-1)).is_err(),
            "u64 cannot hold -1"
        );
    }
}
