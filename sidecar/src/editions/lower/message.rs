use std::collections::{HashMap, HashSet};

use super::{
    Pass, Target,
    field::FieldScope,
    options::{is_map_entry, put_options, without_features},
    synthetic::Synthetic,
};
use crate::editions::{
    MAX_DEPTH,
    features::Features,
    num,
    records::{join, name_of, payloads},
    wire,
};

impl Pass {
    pub(super) fn message(
        &mut self,
        bytes: &[u8],
        parent: &Features,
        scope: &str,
        depth: usize,
    ) -> Result<Vec<u8>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "messages in `{scope}` nest deeper than {MAX_DEPTH} levels"
            ));
        }
        let records = wire::parse(bytes).map_err(|e| format!("in `{scope}`: {e}"))?;
        let full = join(scope, &name_of(&records, num::MESSAGE_NAME)?);
        let at = |e: String| format!("message `{full}`: {e}");

        // First what the fields need before any of them is lowered: the message's features,
        // its oneofs' features, its map entries and the names a synthetic oneof must avoid.
        let mut options = Vec::new();
        let mut oneofs = Vec::new();
        let mut field_names = Vec::new();
        let mut taken = HashSet::new();
        let mut map_entries = HashSet::new();
        for record in &records {
            match record.number {
                num::MESSAGE_OPTIONS => options.push(record.bytes().map_err(at)?),
                num::MESSAGE_ONEOF_DECL => {
                    let oneof = wire::parse(record.bytes().map_err(at)?).map_err(at)?;
                    taken.insert(name_of(&oneof, num::ONEOF_NAME).map_err(at)?);
                    oneofs.push(oneof);
                }
                num::MESSAGE_FIELD | num::MESSAGE_EXTENSION => {
                    let field = wire::parse(record.bytes().map_err(at)?).map_err(at)?;
                    let name = name_of(&field, num::FIELD_NAME).map_err(at)?;
                    if record.number == num::MESSAGE_FIELD {
                        field_names.push(name.clone());
                    }
                    taken.insert(name);
                }
                num::MESSAGE_NESTED_TYPE => {
                    let nested = wire::parse(record.bytes().map_err(at)?).map_err(at)?;
                    let name = name_of(&nested, num::MESSAGE_NAME).map_err(at)?;
                    let nested_options = payloads(&nested, num::MESSAGE_OPTIONS).map_err(at)?;
                    if is_map_entry(&nested_options).map_err(at)? {
                        map_entries.insert(format!(".{}", join(&full, &name)));
                        map_entries.insert(name.clone());
                    }
                    taken.insert(name);
                }
                num::MESSAGE_ENUM_TYPE => {
                    // Enum values are scoped beside their enum, so they are names here too.
                    let enumeration = wire::parse(record.bytes().map_err(at)?).map_err(at)?;
                    taken.insert(name_of(&enumeration, num::ENUM_NAME).map_err(at)?);
                    for value in payloads(&enumeration, num::ENUM_VALUE).map_err(at)? {
                        let value = wire::parse(value).map_err(at)?;
                        taken.insert(name_of(&value, num::ENUM_VALUE_NAME).map_err(at)?);
                    }
                }
                _ => {}
            }
        }
        let features = parent.merged(&options, num::FEATURES_MESSAGE).map_err(at)?;
        let in_map_entry = is_map_entry(&options).map_err(at)?;
        let oneof_features = oneofs
            .iter()
            .map(|oneof| {
                features.merged(&payloads(oneof, num::ONEOF_OPTIONS)?, num::FEATURES_ONEOF)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(at)?;
        if self.target == Target::Proto3 {
            self.check_camel_case(&full, &field_names)?;
        }

        let mut synthetic = Synthetic {
            declared: oneofs.len(),
            taken,
            names: Vec::new(),
        };
        let no_map_entries = HashSet::new();
        let mut out = Vec::with_capacity(bytes.len() + 16);
        for record in &records {
            match record.number {
                num::MESSAGE_FIELD | num::MESSAGE_EXTENSION => {
                    let extension = record.number == num::MESSAGE_EXTENSION;
                    let scope = FieldScope {
                        parent: &features,
                        oneofs: if extension { &[] } else { &oneof_features },
                        map_entries: if extension {
                            &no_map_entries
                        } else {
                            &map_entries
                        },
                        in_map_entry: in_map_entry && !extension,
                        extension,
                        scope: &full,
                    };
                    let field = self.field(record.bytes().map_err(at)?, &scope, &mut synthetic)?;
                    wire::put_len(&mut out, record.number, &field);
                }
                num::MESSAGE_NESTED_TYPE => {
                    let nested =
                        self.message(record.bytes().map_err(at)?, &features, &full, depth + 1)?;
                    wire::put_len(&mut out, num::MESSAGE_NESTED_TYPE, &nested);
                }
                num::MESSAGE_ENUM_TYPE => {
                    let enumeration =
                        self.enumeration(record.bytes().map_err(at)?, &features, &full)?;
                    wire::put_len(&mut out, num::MESSAGE_ENUM_TYPE, &enumeration);
                }
                num::MESSAGE_OPTIONS => put_options(
                    &mut out,
                    num::MESSAGE_OPTIONS,
                    record.bytes().map_err(at)?,
                    num::FEATURES_MESSAGE,
                )
                .map_err(at)?,
                num::MESSAGE_ONEOF_DECL => {
                    let oneof = without_features(
                        record.bytes().map_err(at)?,
                        num::ONEOF_OPTIONS,
                        num::FEATURES_ONEOF,
                    )
                    .map_err(at)?;
                    wire::put_len(&mut out, num::MESSAGE_ONEOF_DECL, &oneof);
                }
                num::MESSAGE_EXTENSION_RANGE => {
                    let range = without_features(
                        record.bytes().map_err(at)?,
                        num::EXTENSION_RANGE_OPTIONS,
                        num::FEATURES_EXTENSION_RANGE,
                    )
                    .map_err(at)?;
                    wire::put_len(&mut out, num::MESSAGE_EXTENSION_RANGE, &range);
                }
                _ => out.extend_from_slice(record.raw),
            }
        }
        for name in &synthetic.names {
            let mut oneof = Vec::new();
            wire::put_len(&mut oneof, num::ONEOF_NAME, name.as_bytes());
            wire::put_len(&mut out, num::MESSAGE_ONEOF_DECL, &oneof);
        }
        Ok(out)
    }

    /// prost-reflect refuses, in proto3 files only, fields whose names differ only in case and
    /// underscores; report that here, where the reason for proto3 is known.
    fn check_camel_case(&self, message: &str, fields: &[String]) -> Result<(), String> {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for name in fields {
            let key: String = name
                .chars()
                .filter(|&c| c != '_')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            if let Some(first) = seen.insert(key, name) {
                return Err(format!(
                    "message `{message}`: fields `{first}` and `{name}` differ only in case and underscores, which prost-reflect refuses in proto3, and this file needs proto3 for its IMPLICIT-presence fields (e.g. `{}`); rename one of the two",
                    self.implicit.as_deref().unwrap_or("?")
                ));
            }
        }
        Ok(())
    }
}
