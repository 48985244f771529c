//! Protobuf descriptors: loaded from a FileDescriptorSet file or fetched over gRPC server
//! reflection, then used to resolve each configured stream into what the hot path needs.

pub mod guard;

use std::{collections::BTreeSet, path::Path, time::Duration};

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor,
    prost_types::{FileDescriptorProto, FileDescriptorSet},
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{
    config::{ResumeMode, StreamConfig},
    editions,
    offset::{LeafKind, OffsetPath, Presence, Step},
};

/// One resumable method, resolved against the descriptors.
#[derive(Debug, Clone)]
pub struct ResumableMethod {
    /// `package.Service/Method`, as in the config.
    pub name: String,
    pub input: MessageDescriptor,
    pub offset: OffsetPath,
    pub offset_field: String,
    /// The resume field's chain of fields from the request root to the leaf.
    pub resume_path: Vec<FieldDescriptor>,
    pub resume_field: String,
    /// The resume field means "from, inclusive": an app's own value `v` holds what is below it.
    pub resume_inclusive: bool,
    pub retry_codes: Vec<i32>,
    pub max_outage: Duration,
    pub mode: ResumeMode,
    pub on_app_cancel: crate::config::AppCancel,
}

impl ResumableMethod {
    /// The HTTP/2 `:path` of the method.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// How the offset and resume fields are read and written, for `--check` and the log:
    /// `offset: uint64, implicit presence (absent reads as 0); resume: optional sint64 (after)`.
    pub fn fields_note(&self) -> String {
        let offset = match (self.offset.presence, self.offset.leaf) {
            (Presence::Explicit, kind) => format!(
                "{}, explicit presence (a message without it ends the call)",
                kind.name()
            ),
            (Presence::Implicit, LeafKind::String) => {
                "string, implicit presence (absent reads as \"\")".to_owned()
            }
            (Presence::Implicit, LeafKind::Bytes) => {
                "bytes, implicit presence (absent reads as empty)".to_owned()
            }
            (Presence::Implicit, kind) => {
                format!("{}, implicit presence (absent reads as 0)", kind.name())
            }
        };
        let resume = self.resume_path.last().map_or_else(String::new, |leaf| {
            let kind = leaf_kind(Some(leaf)).map_or("?", LeafKind::name);
            match presence(Some(leaf)) {
                Presence::Explicit => format!("{kind}, explicit presence (0 is written)"),
                Presence::Implicit => format!("{kind}, implicit presence"),
            }
        });
        let meaning = if self.resume_inclusive {
            "from, inclusive"
        } else {
            "strictly after"
        };
        format!("offset: {offset}; resume: {resume}, meaning {meaning}")
    }
}

pub fn load_file(path: &Path) -> Result<DescriptorPool, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "key `descriptors`: cannot read {}: {e}; valid: a FileDescriptorSet written by `protoc --include_imports --descriptor_set_out`, or `reflection`",
            path.display()
        )
    })?;
    pool_from_bytes(&bytes).map_err(|e| {
        format!(
            "key `descriptors`: {} is not a usable FileDescriptorSet ({e}); write it with `protoc --include_imports --descriptor_set_out`",
            path.display()
        )
    })
}

/// A pool from FileDescriptorSet bytes: editions files lowered to the proto2/proto3 files
/// prost-reflect can load ([`crate::editions`]), then refused if prost-reflect would crash on
/// them ([`guard`]).
pub fn pool_from_bytes(bytes: &[u8]) -> Result<DescriptorPool, String> {
    let bytes = editions::lower_set(bytes)?;
    let set = FileDescriptorSet::decode(bytes.as_ref()).map_err(|e| e.to_string())?;
    guard::pool(set.file)
}

/// One file as server reflection returns it, decoded. Lowered before prost-types decodes it:
/// prost-types has no `edition` field and would drop it.
pub fn file_from_reflection(raw: &[u8]) -> Result<FileDescriptorProto, String> {
    let raw = editions::lower_file(raw)?;
    FileDescriptorProto::decode(raw.as_ref()).map_err(|e| e.to_string())
}

/// Fetches the files that define `services` (and everything they import) from the upstream's
/// `grpc.reflection.v1.ServerReflection`, retrying until `deadline` so the sidecar may start
/// before its upstream.
pub async fn fetch_reflection(
    upstream: &http::Uri,
    services: &[String],
    within: Duration,
) -> Result<DescriptorPool, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut delay = Duration::from_millis(100);
    loop {
        match fetch_once(upstream, services).await {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() + delay >= deadline => {
                return Err(format!(
                    "key `descriptors`: reflection from {upstream} failed for {}s: {e}",
                    within.as_secs()
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "descriptors: reflection not available yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn fetch_once(upstream: &http::Uri, services: &[String]) -> Result<DescriptorPool, String> {
    let channel = tonic::transport::Endpoint::from(upstream.clone())
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = ServerReflectionClient::new(channel);
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut wanted: Vec<MessageRequest> = services
        .iter()
        .map(|s| MessageRequest::FileContainingSymbol(s.clone()))
        .collect();
    while let Some(request) = wanted.pop() {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut stream = client
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        let reply = stream
            .message()
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .ok_or("reflection stream ended without a reply")?;
        match reply.message_response {
            Some(MessageResponse::FileDescriptorResponse(r)) => {
                for raw in r.file_descriptor_proto {
                    let file = file_from_reflection(&raw)
                        .map_err(|e| format!("bad descriptor from reflection: {e}"))?;
                    if seen.insert(file.name().to_owned()) {
                        for dep in &file.dependency {
                            if !seen.contains(dep) {
                                wanted.push(MessageRequest::FileByFilename(dep.clone()));
                            }
                        }
                        files.push(file);
                    }
                }
            }
            Some(MessageResponse::ErrorResponse(e)) => {
                return Err(format!(
                    "reflection error {}: {}",
                    e.error_code, e.error_message
                ));
            }
            _ => return Err("unexpected reflection reply".into()),
        }
    }
    guard::pool(files).map_err(|e| format!("descriptors from reflection do not resolve: {e}"))
}

/// Resolves every configured stream; returns every problem found, each naming the key.
pub fn resolve(
    pool: &DescriptorPool,
    streams: &[StreamConfig],
) -> Result<Vec<ResumableMethod>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        match resolve_one(pool, s, i) {
            Ok(m) => out.push(m),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The server-streaming method `streams[i].method` names, or an error listing the valid ones.
fn find_method(
    pool: &DescriptorPool,
    s: &StreamConfig,
    key: &str,
) -> Result<prost_reflect::MethodDescriptor, Vec<String>> {
    let Some((service_name, method_name)) = s.method.split_once('/') else {
        return Err(vec![format!(
            "key `{key}.method`: {:?} must look like package.Service/Method",
            s.method
        )]);
    };
    let Some(service) = pool.get_service_by_name(service_name) else {
        let mut known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        known.sort();
        return Err(vec![format!(
            "key `{key}.method`: service {service_name:?} is not in the descriptors; valid services: {}",
            list(&known)
        )]);
    };
    let Some(method) = service.methods().find(|m| m.name() == method_name) else {
        let known: Vec<String> = service
            .methods()
            .map(|m| format!("{}/{}", service.full_name(), m.name()))
            .collect();
        return Err(vec![format!(
            "key `{key}.method`: {service_name} has no method {method_name:?}; valid methods: {}",
            list(&known)
        )]);
    };
    if !method.is_server_streaming() || method.is_client_streaming() {
        let valid: Vec<String> = service
            .methods()
            .filter(|m| m.is_server_streaming() && !m.is_client_streaming())
            .map(|m| format!("{}/{}", service.full_name(), m.name()))
            .collect();
        return Err(vec![format!(
            "key `{key}.method`: {} is not server-streaming (only server-streaming methods resume); valid methods: {}",
            s.method,
            list(&valid)
        )]);
    }
    Ok(method)
}

fn resolve_one(
    pool: &DescriptorPool,
    s: &StreamConfig,
    i: usize,
) -> Result<ResumableMethod, Vec<String>> {
    let key = format!("streams[{i}]");
    let method = find_method(pool, s, &key)?;
    let mut errors = Vec::new();
    let offset = field_path(
        &method.output(),
        &s.offset_field,
        &format!("{key}.offset_field"),
    );
    let resume = field_path(
        &method.input(),
        &s.resume_field,
        &format!("{key}.resume_field"),
    );
    let (offset, resume) = match (offset, resume) {
        (Ok(o), Ok(r)) => (o, r),
        (o, r) => {
            errors.extend(o.err());
            errors.extend(r.err());
            return Err(errors);
        }
    };
    let offset_path = offset_path(&offset);
    let offset_leaf = leaf_kind(offset.last());
    let resume_leaf = leaf_kind(resume.last());
    match (offset_leaf, resume_leaf) {
        (Some(o), Some(r)) if o.is_integer() == r.is_integer() => {}
        (Some(_), Some(_)) => errors.push(format!(
            "key `{key}.resume_field`: {} cannot carry {} (integer and string/bytes do not mix)",
            s.resume_field, s.offset_field
        )),
        _ => {}
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let offset = offset_path.ok_or_else(|| vec!["unreachable: leaf checked".to_owned()])?;
    Ok(ResumableMethod {
        name: s.method.clone(),
        input: method.input(),
        offset,
        offset_field: s.offset_field.clone(),
        resume_path: resume,
        resume_field: s.resume_field.clone(),
        resume_inclusive: s.resume_inclusive,
        retry_codes: s.retry_codes.clone(),
        max_outage: s.max_outage,
        mode: s.resume,
        on_app_cancel: s.on_app_cancel,
    })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

/// What the wire walk needs of a resolved path (`field_path`): each step, the leaf's kind and
/// its presence. `None` if the leaf is not an integer, string or bytes field.
pub fn offset_path(fields: &[FieldDescriptor]) -> Option<OffsetPath> {
    Some(OffsetPath::new(
        fields.iter().map(step).collect(),
        leaf_kind(fields.last())?,
        presence(fields.last()),
    ))
}

/// A path's field as the wire walk needs it: its number, whether it is group-encoded, and the
/// other members of its (real, not synthetic) oneof, which clear it.
fn step(field: &FieldDescriptor) -> Step {
    let clears = field
        .containing_oneof()
        .filter(|o| !o.is_synthetic())
        .map(|o| {
            o.fields()
                .map(|f| f.number())
                .filter(|&n| n != field.number())
                .collect()
        })
        .unwrap_or_default();
    Step {
        number: field.number(),
        group: field.is_group(),
        clears,
    }
}

/// The leaf's presence, from the descriptor: prost-reflect's `supports_presence` is true for
/// proto2 singular fields, proto3 `optional`, oneof members and message fields.
pub fn presence(leaf: Option<&FieldDescriptor>) -> Presence {
    match leaf {
        Some(f) if f.supports_presence() => Presence::Explicit,
        _ => Presence::Implicit,
    }
}

pub fn leaf_kind(field: Option<&FieldDescriptor>) -> Option<LeafKind> {
    Some(match field?.kind() {
        Kind::Int32 => LeafKind::Int32,
        Kind::Int64 => LeafKind::Int64,
        Kind::Uint32 => LeafKind::UInt32,
        Kind::Uint64 => LeafKind::UInt64,
        Kind::Sint32 => LeafKind::SInt32,
        Kind::Sint64 => LeafKind::SInt64,
        Kind::Fixed32 => LeafKind::Fixed32,
        Kind::Fixed64 => LeafKind::Fixed64,
        Kind::Sfixed32 => LeafKind::SFixed32,
        Kind::Sfixed64 => LeafKind::SFixed64,
        Kind::String => LeafKind::String,
        Kind::Bytes => LeafKind::Bytes,
        _ => return None,
    })
}

/// Resolves a dotted path; every step but the last must be a singular message field, the last a
/// singular integer, string or bytes field. `key` names the config key in errors.
pub fn field_path(
    root: &MessageDescriptor,
    path: &str,
    key: &str,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut msg = root.clone();
    let mut out = Vec::new();
    let parts: Vec<&str> = path.split('.').collect();
    for (n, part) in parts.iter().enumerate() {
        let Some(field) = msg.get_field_by_name(part) else {
            let names: Vec<String> = msg.fields().map(|f| f.name().to_owned()).collect();
            return Err(format!(
                "key `{key}`: {} has no field {part:?}; valid fields: {}",
                msg.full_name(),
                list(&names)
            ));
        };
        if field.is_list() || field.is_map() {
            return Err(format!(
                "key `{key}`: {}.{part} is repeated; an offset path needs singular fields",
                msg.full_name()
            ));
        }
        let last = n + 1 == parts.len();
        match (last, field.kind()) {
            (false, Kind::Message(inner)) => msg = inner,
            (false, _) => {
                return Err(format!(
                    "key `{key}`: {}.{part} is not a message, so {path:?} cannot go deeper",
                    msg.full_name()
                ));
            }
            (true, _) if leaf_kind(Some(&field)).is_none() => {
                let scalar: Vec<String> = msg
                    .fields()
                    .filter(|f| !f.is_list() && leaf_kind(Some(f)).is_some())
                    .map(|f| f.name().to_owned())
                    .collect();
                return Err(format!(
                    "key `{key}`: {}.{part} has type {:?}; valid: an integer, string or bytes field, e.g. {}",
                    msg.full_name(),
                    field.kind(),
                    list(&scalar)
                ));
            }
            (true, _) => {}
        }
        out.push(field);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(reprise_proto::DEMO_DESCRIPTOR_SET).expect("demo descriptors")
    }

    fn stream(method: &str, offset: &str, resume: &str) -> StreamConfig {
        StreamConfig {
            method: method.into(),
            offset_field: offset.into(),
            resume_field: resume.into(),
            resume_inclusive: false,
            resume: ResumeMode::OnRequest,
            on_app_cancel: crate::config::AppCancel::Restart,
            retry_codes: vec![14],
            max_outage: Duration::from_secs(30),
        }
    }

    #[test]
    fn resolves_flat_and_nested_paths() {
        let pool = pool();
        let m = resolve(
            &pool,
            &[
                stream("demo.v1.UserService/ListUsers", "user_id", "after_user_id"),
                stream(
                    "demo.v1.EventService/StreamEvents",
                    "cursor.seq",
                    "start.after_seq",
                ),
            ],
        )
        .expect("valid");
        assert_eq!(m[0].offset.numbers(), vec![1]);
        assert_eq!(m[0].offset.leaf, LeafKind::String);
        assert_eq!(m[1].offset.numbers(), vec![1, 1]);
        assert_eq!(m[1].offset.leaf, LeafKind::UInt64);
        assert_eq!(m[1].resume_path.len(), 2);
    }

    #[test]
    fn errors_name_the_key_and_the_valid_choices() {
        let pool = pool();
        let cases = [
            (
                stream("demo.v1.Nope/ListUsers", "user_id", "after_user_id"),
                "valid services: demo.v1.EventService, demo.v1.LedgerService, demo.v1.UserService, pb.Server",
            ),
            (
                stream("demo.v1.UserService/ListUser", "user_id", "after_user_id"),
                "valid methods: demo.v1.UserService/ListUsers",
            ),
            (
                stream("demo.v1.UserService/GetUser", "user_id", "user_id"),
                "is not server-streaming",
            ),
            (
                stream("demo.v1.UserService/ListUsers", "id", "after_user_id"),
                "key `streams[0].offset_field`: demo.v1.User has no field \"id\"; valid fields: user_id, name",
            ),
            (
                stream("demo.v1.UserService/ListUsers", "user_id", "labels"),
                "is repeated",
            ),
            (
                stream(
                    "demo.v1.EventService/StreamEvents",
                    "cursor",
                    "start.after_seq",
                ),
                "valid: an integer, string or bytes field",
            ),
            (
                stream("demo.v1.EventService/StreamEvents", "cursor.seq", "topic"),
                "integer and string/bytes do not mix",
            ),
        ];
        for (s, needle) in cases {
            let errors = resolve(&pool, &[s]).expect_err("invalid").join("\n");
            assert!(errors.contains(needle), "{needle:?} not in {errors}");
        }
    }
}
