use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Syntax, Value,
    prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet, field_descriptor_proto::Label,
        field_descriptor_proto::Type,
    },
};

use super::*;

mod encoding;
mod errors;
mod inheritance;
mod lowering;
mod pass_through;
mod prost_reflect_limits;

const V1: &str = "reprise.editions.v1";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/editions")
}

fn protoc() -> Command {
    let mut cmd = Command::new(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    cmd.arg(format!("-I{}", data_dir().display()));
    cmd.arg(format!(
        "-I{}",
        protoc_bin_vendored::include_path()
            .expect("vendored includes")
            .display()
    ));
    cmd
}

/// `protoc --include_imports --descriptor_set_out` of files under tests/data/editions (or,
/// with `extra`, of a source written to a temporary directory).
fn compile_in(extra: Option<(&str, &str)>, files: &[&str]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("set.pb");
    let mut cmd = protoc();
    if let Some((name, source)) = extra {
        std::fs::write(dir.path().join(name), source).expect("write proto");
        cmd.arg(format!("-I{}", dir.path().display()));
    }
    let output = cmd
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(files)
        .output()
        .expect("run protoc");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(std::fs::read(out).expect("read descriptor set"))
}

fn compile(files: &[&str]) -> Vec<u8> {
    compile_in(None, files).expect("protoc compiles the test protos")
}

fn compile_source(source: &str) -> Vec<u8> {
    compile_in(Some(("inline.proto", source)), &["inline.proto"])
        .expect("protoc compiles the inline proto")
}

fn load(set: &[u8]) -> DescriptorPool {
    let lowered = lower_set(set).expect("lowers");
    DescriptorPool::decode(lowered.as_ref()).expect("prost-reflect loads the lowered set")
}

/// The wire bytes C++ protobuf (protoc, with real editions semantics) writes for a
/// text-format message: the reference the lowered descriptors must agree with.
fn protoc_encode(file: &str, message: &str, text: &str) -> Vec<u8> {
    let mut child = protoc()
        .arg(format!("--encode={message}"))
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoc --encode");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write text");
    let output = child.wait_with_output().expect("protoc --encode");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is in the pool"))
}

fn field(message: &MessageDescriptor, name: &str) -> FieldDescriptor {
    message
        .get_field_by_name(name)
        .unwrap_or_else(|| panic!("{} has {name}", message.full_name()))
}

/// (field, supports_presence, is_group, is_packed, containing oneof or "" for none)
type Row = (&'static str, bool, bool, bool, &'static str);

#[track_caller]
fn assert_fields(message: &MessageDescriptor, rows: &[Row]) {
    for &(name, presence, group, packed, oneof) in rows {
        let f = field(message, name);
        let seen = (
            f.supports_presence(),
            f.is_group(),
            f.is_packed(),
            f.containing_oneof()
                .map(|o| o.name().to_owned())
                .unwrap_or_default(),
        );
        assert_eq!(
            seen,
            (presence, group, packed, oneof.to_owned()),
            "{}.{name}: (supports_presence, is_group, is_packed, oneof)",
            message.full_name()
        );
    }
}

fn get(message: &DynamicMessage, name: &str) -> Value {
    message
        .get_field_by_name(name)
        .unwrap_or_else(|| panic!("field {name}"))
        .into_owned()
}

fn has(message: &DynamicMessage, name: &str) -> bool {
    message.has_field_by_name(name)
}

// Builders for hand-made descriptors, where protoc cannot be made to write what a test
// needs (features at levels protoc refuses, broken input).
fn len(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_len(&mut out, number, payload);
    out
}

fn var(number: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_varint_field(&mut out, number, value);
    out
}

fn text(number: u32, value: &str) -> Vec<u8> {
    len(number, value.as_bytes())
}

/// `features { field_presence: presence }` inside an options message.
fn presence_option(features_field: u32, presence: u64) -> Vec<u8> {
    len(features_field, &var(num::FEATURE_FIELD_PRESENCE, presence))
}

fn scalar(name: &str, number: u64, options: &[u8]) -> Vec<u8> {
    let mut field = [
        text(num::FIELD_NAME, name),
        var(3, number),
        var(num::FIELD_LABEL, num::LABEL_OPTIONAL),
        var(num::FIELD_TYPE, 5),
    ]
    .concat();
    if !options.is_empty() {
        field.extend(len(num::FIELD_OPTIONS, options));
    }
    field
}

fn editions_file(name: &str, edition: u64, body: &[Vec<u8>]) -> Vec<u8> {
    let mut file = [
        text(num::FILE_NAME, name),
        text(num::FILE_PACKAGE, "hand"),
        text(num::FILE_SYNTAX, "editions"),
        var(num::FILE_EDITION, edition),
    ]
    .concat();
    for part in body {
        file.extend_from_slice(part);
    }
    file
}

fn set_of(files: &[Vec<u8>]) -> Vec<u8> {
    files.iter().flat_map(|f| len(num::SET_FILE, f)).collect()
}

/// The files of a set as raw bytes, as reflection sends them. Re-encoding them through
/// prost-types would already lose `edition` and every `features`.
fn raw_files(set: &[u8]) -> Vec<Vec<u8>> {
    wire::parse(set)
        .expect("valid set")
        .iter()
        .map(|r| r.bytes().expect("file").to_vec())
        .collect()
}
