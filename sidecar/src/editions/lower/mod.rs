use std::collections::HashSet;

use self::{
    field::FieldScope,
    options::{put_options, service, without_features},
    synthetic::Synthetic,
};
use super::{
    features::Features,
    num,
    records::{join, last, name_of, payloads, utf8},
    wire::{self, Record},
};

mod field;
mod message;
mod options;
mod synthetic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Proto2,
    Proto3,
}

pub(super) struct Pass {
    pub(super) target: Target,
    /// The first field found with IMPLICIT presence: what makes the target proto3, and what the
    /// errors caused by proto3 point at.
    pub(super) implicit: Option<String>,
}

impl Pass {
    pub(super) fn file(
        &mut self,
        records: &[Record<'_>],
        defaults: Features,
    ) -> Result<Vec<u8>, String> {
        let package = match last(records, num::FILE_PACKAGE) {
            Some(record) => utf8(record.bytes()?, "package")?,
            None => String::new(),
        };
        let options = payloads(records, num::FILE_OPTIONS)?;
        let features = defaults
            .merged(&options, num::FEATURES_FILE)
            .map_err(|e| format!("file options: {e}"))?;
        let mut out = Vec::with_capacity(records.iter().map(|r| r.raw.len()).sum::<usize>() + 16);
        let mut syntax_written = false;
        let mut extensions = Synthetic::none();
        let no_map_entries = HashSet::new();
        for record in records {
            match record.number {
                num::FILE_SYNTAX if !syntax_written => {
                    let syntax = match self.target {
                        Target::Proto2 => "proto2",
                        Target::Proto3 => "proto3",
                    };
                    wire::put_len(&mut out, num::FILE_SYNTAX, syntax.as_bytes());
                    syntax_written = true;
                }
                num::FILE_SYNTAX | num::FILE_EDITION => {}
                num::FILE_OPTIONS => put_options(
                    &mut out,
                    num::FILE_OPTIONS,
                    record.bytes()?,
                    num::FEATURES_FILE,
                )?,
                num::FILE_MESSAGE_TYPE => {
                    let message = self.message(record.bytes()?, &features, &package, 1)?;
                    wire::put_len(&mut out, num::FILE_MESSAGE_TYPE, &message);
                }
                num::FILE_ENUM_TYPE => {
                    let enumeration = self.enumeration(record.bytes()?, &features, &package)?;
                    wire::put_len(&mut out, num::FILE_ENUM_TYPE, &enumeration);
                }
                num::FILE_SERVICE => {
                    let service = service(record.bytes()?)?;
                    wire::put_len(&mut out, num::FILE_SERVICE, &service);
                }
                num::FILE_EXTENSION => {
                    let scope = FieldScope {
                        parent: &features,
                        oneofs: &[],
                        map_entries: &no_map_entries,
                        in_map_entry: false,
                        extension: true,
                        scope: &package,
                    };
                    let extension = self.field(record.bytes()?, &scope, &mut extensions)?;
                    wire::put_len(&mut out, num::FILE_EXTENSION, &extension);
                }
                _ => out.extend_from_slice(record.raw),
            }
        }
        Ok(out)
    }

    fn enumeration(
        &mut self,
        bytes: &[u8],
        parent: &Features,
        scope: &str,
    ) -> Result<Vec<u8>, String> {
        let records = wire::parse(bytes).map_err(|e| format!("in `{scope}`: {e}"))?;
        let full = join(scope, &name_of(&records, num::ENUM_NAME)?);
        let at = |e: String| format!("enum `{full}`: {e}");
        let options = payloads(&records, num::ENUM_OPTIONS).map_err(at)?;
        let features = parent.merged(&options, num::FEATURES_ENUM).map_err(at)?;
        let mut first = None;
        let mut out = Vec::with_capacity(bytes.len());
        for record in &records {
            match record.number {
                num::ENUM_VALUE => {
                    let value = record.bytes().map_err(at)?;
                    if first.is_none() {
                        let number = last(&wire::parse(value).map_err(at)?, num::ENUM_VALUE_NUMBER)
                            .map(Record::varint)
                            .transpose()
                            .map_err(at)?
                            .unwrap_or(0);
                        first = Some(number as i32);
                    }
                    let value =
                        without_features(value, num::ENUM_VALUE_OPTIONS, num::FEATURES_ENUM_VALUE)
                            .map_err(at)?;
                    wire::put_len(&mut out, num::ENUM_VALUE, &value);
                }
                num::ENUM_OPTIONS => put_options(
                    &mut out,
                    num::ENUM_OPTIONS,
                    record.bytes().map_err(at)?,
                    num::FEATURES_ENUM,
                )
                .map_err(at)?,
                _ => out.extend_from_slice(record.raw),
            }
        }
        if self.target == Target::Proto3
            && let Some(first) = first.filter(|&n| n != 0)
        {
            let kind = if features.closed_enum {
                "a CLOSED enum"
            } else {
                "an enum"
            };
            return Err(format!(
                "enum `{full}` is {kind} whose first value is {first}, which prost-reflect only loads from proto2, but this file needs proto3 for its IMPLICIT-presence fields (e.g. `{}`); give the enum a first value of 0 or move it to another file",
                self.implicit.as_deref().unwrap_or("?")
            ));
        }
        Ok(out)
    }
}
