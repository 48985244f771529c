//! Protobuf Editions (`edition = "2023"` / `"2024"`), lowered to proto2 or proto3 so that
//! prost-reflect 0.16 can load them.
//!
//! Why this exists: prost-reflect 0.16.5 cannot load a file whose `syntax` is `"editions"`: it
//! means to refuse it (`unknown syntax`) but panics while building that error. And prost-types
//! 0.14 has neither `FileDescriptorProto.edition` nor the `features` fields of the `*Options`
//! messages, so decoding such a file with prost-types silently drops what decides field
//! presence, packing and group encoding. Rather than wait for editions support upstream, every
//! editions file is rewritten into the proto2 or proto3 file that has the same wire semantics,
//! before prost-reflect sees it. That has to happen on the raw bytes: a file that went through
//! prost-types has already lost its edition. Files that are already proto2 or proto3 are not
//! touched; when nothing needs lowering the input bytes are returned as they came.
//!
//! The descriptors are read and written in the raw wire format (prost-types would lose the very
//! fields this needs), and every record the lowering does not change is copied byte for byte, so
//! unknown fields, source info and options survive.
//!
//! Features are resolved as protobuf does: the edition's defaults, then the file's `features`,
//! then each enclosing message, the oneof (for its fields), the field. Extensions inherit from
//! the scope they are declared in. The edition defaults of 2023 and 2024 are the same for
//! everything with a wire effect (2024 only adds source-retention features such as naming style
//! and symbol visibility); other editions are refused by name.
//!
//! The lowering, per editions file:
//! - The target is proto3 when some singular field resolves to `IMPLICIT` presence (only proto3
//!   can express a field without presence), otherwise proto2, which expresses everything else
//!   directly and avoids the checks prost-reflect makes on proto3 files only.
//! - `EXPLICIT` singular scalars: plain `optional` in proto2; in proto3 `proto3_optional` with a
//!   synthetic oneof named as protoc names them (`_name`, prefixed with `X` until unique),
//!   appended after the real oneofs.
//! - `LEGACY_REQUIRED`: `LABEL_REQUIRED` (in proto3 also `proto3_optional`, since prost-reflect
//!   gives required scalars presence only in proto2 files).
//! - `message_encoding = DELIMITED`: `TYPE_GROUP`, except for map fields and fields of map
//!   entries, which protobuf keeps length-prefixed.
//! - `repeated_field_encoding`: an explicit `packed` option on every packable repeated field.
//! - `edition` is dropped and every `features` option is removed, so the result is a plain
//!   proto2/proto3 descriptor.
//!
//! What prost-reflect cannot express, and what happens instead:
//! - `enum_type = CLOSED`: prost-reflect treats every enum as open, in proto2 files too, so an
//!   unknown number in a closed-enum field is kept in the field instead of going to unknown
//!   fields. Its bytes are forwarded unchanged either way.
//! - `utf8_validation = NONE`: prost-reflect always validates `string` fields (in proto2 files
//!   too), so invalid UTF-8 in such a field fails to decode.
//! - `LEGACY_REQUIRED` in a proto3 target is outside what protoc would write (proto3 has no
//!   `required`); prost-reflect accepts it and reports `is_required()`, and it does not enforce
//!   required fields anyway.
//! - A proto3 target inherits two checks prost-reflect makes on proto3 files: every enum must
//!   start with 0 (only a `CLOSED` enum may not), and no two fields of a message may differ only
//!   in case and underscores. A file that mixes `IMPLICIT` fields with either is refused with an
//!   error that names both.

use std::borrow::Cow;

use self::{
    features::{Features, edition_name},
    lower::{Pass, Target},
    records::last,
    wire::Record,
};

mod features;
mod lower;
/// Field and enum numbers from google/protobuf/descriptor.proto.
mod num;
mod records;
#[cfg(test)]
mod tests;
/// Just enough of the protobuf wire format to walk descriptors and copy what is not changed.
mod wire;

/// FileDescriptorSet bytes in, FileDescriptorSet bytes prost-reflect 0.16 can load out.
///
/// Returns the input unchanged (borrowed) when no file needs lowering.
pub fn lower_set(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let records = wire::parse(bytes).map_err(|e| format!("not a FileDescriptorSet ({e})"))?;
    let mut lowered = Vec::with_capacity(records.len());
    let mut files = 0;
    for record in &records {
        if record.number != num::SET_FILE {
            lowered.push(None);
            continue;
        }
        let file = record
            .bytes()
            .map_err(|e| format!("FileDescriptorSet: file #{}: {e}", files + 1))?;
        lowered.push(lower_file_bytes(file, Some(files))?);
        files += 1;
    }
    if lowered.iter().all(Option::is_none) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    for (record, file) in records.iter().zip(lowered) {
        match file {
            Some(file) => wire::put_len(&mut out, num::SET_FILE, &file),
            None => out.extend_from_slice(record.raw),
        }
    }
    Ok(Cow::Owned(out))
}

/// One FileDescriptorProto (as gRPC server reflection returns them) in, lowered out.
///
/// Returns the input unchanged (borrowed) when the file is not an editions file.
pub fn lower_file(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    Ok(match lower_file_bytes(bytes, None)? {
        Some(file) => Cow::Owned(file),
        None => Cow::Borrowed(bytes),
    })
}

/// Deeper than this prost would refuse the descriptor anyway (its recursion limit is 100); the
/// bound keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 100;

/// `Ok(None)` when the file is not an editions file and passes through untouched.
fn lower_file_bytes(bytes: &[u8], ordinal: Option<usize>) -> Result<Option<Vec<u8>>, String> {
    let unnamed = || ordinal.map_or_else(|| "file".to_owned(), |i| format!("file #{}", i + 1));
    let records = wire::parse(bytes)
        .map_err(|e| format!("{}: not a FileDescriptorProto ({e})", unnamed()))?;
    let label = match last(&records, num::FILE_NAME).map(Record::bytes) {
        Some(Ok(name)) => format!("file `{}`", String::from_utf8_lossy(name)),
        Some(Err(e)) => return Err(format!("{}: {e}", unnamed())),
        None => unnamed(),
    };
    let at = |e: String| format!("{label}: {e}");
    let syntax = last(&records, num::FILE_SYNTAX)
        .map(Record::bytes)
        .transpose()
        .map_err(at)?;
    if syntax != Some(b"editions".as_slice()) {
        return Ok(None);
    }
    let edition = last(&records, num::FILE_EDITION)
        .map(Record::varint)
        .transpose()
        .map_err(at)?
        .ok_or_else(|| at("syntax is \"editions\" but no edition is set".to_owned()))?;
    // An enum is an int32 on the wire, sign-extended to 64 bits.
    let edition = edition as i32;
    let defaults = Features::for_edition(edition).ok_or_else(|| {
        at(format!(
            "edition {} is not supported; supported editions: 2023, 2024",
            edition_name(edition)
        ))
    })?;
    // A first pass towards proto2 finds out whether proto3 is needed; if so the file is lowered
    // again, which is simpler than planning both and cheap at descriptor sizes.
    let mut pass = Pass {
        target: Target::Proto2,
        implicit: None,
    };
    let lowered = pass.file(&records, defaults).map_err(at)?;
    if pass.implicit.is_none() {
        return Ok(Some(lowered));
    }
    pass.target = Target::Proto3;
    pass.file(&records, defaults).map(Some).map_err(at)
}
