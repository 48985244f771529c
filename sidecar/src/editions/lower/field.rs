use std::collections::HashSet;

use super::{Pass, Target, options::check_features, synthetic::Synthetic};
use crate::editions::{
    features::{Features, Presence},
    num,
    records::{join, name_of},
    wire,
};

/// Where a field is declared, for its inheritance and for what its presence can be.
pub(super) struct FieldScope<'s> {
    /// The message's (or, for an extension, its scope's) resolved features.
    pub(super) parent: &'s Features,
    /// The resolved features of each oneof of the message, by index.
    pub(super) oneofs: &'s [Features],
    /// Full names (with the leading dot) and simple names of the message's nested map entries.
    pub(super) map_entries: &'s HashSet<String>,
    pub(super) in_map_entry: bool,
    pub(super) extension: bool,
    /// The full name of the scope, to name the field.
    pub(super) scope: &'s str,
}

impl Pass {
    pub(super) fn field(
        &mut self,
        bytes: &[u8],
        scope: &FieldScope<'_>,
        synthetic: &mut Synthetic,
    ) -> Result<Vec<u8>, String> {
        let records = wire::parse(bytes).map_err(|e| format!("in `{}`: {e}", scope.scope))?;
        let name = name_of(&records, num::FIELD_NAME)?;
        let full = join(scope.scope, &name);
        let what = if scope.extension {
            "extension"
        } else {
            "field"
        };
        let at = |e: String| format!("{what} `{full}`: {e}");

        let mut label = num::LABEL_OPTIONAL;
        let mut ty = None;
        let mut type_name = None;
        let mut oneof_index = None;
        let mut proto3_optional = false;
        let mut options = Vec::new();
        for record in &records {
            match record.number {
                num::FIELD_LABEL => label = record.varint().map_err(at)?,
                num::FIELD_TYPE => ty = Some(record.varint().map_err(at)?),
                num::FIELD_TYPE_NAME => type_name = Some(record.bytes().map_err(at)?),
                num::FIELD_ONEOF_INDEX => oneof_index = Some(record.varint().map_err(at)?),
                num::FIELD_PROTO3_OPTIONAL => proto3_optional = record.varint().map_err(at)? != 0,
                num::FIELD_OPTIONS => options.push(record.bytes().map_err(at)?),
                _ => {}
            }
        }
        if proto3_optional {
            return Err(at(
                "proto3_optional is set, which only proto3 files may use".to_owned(),
            ));
        }
        let ty = match ty {
            Some(ty @ num::TYPE_DOUBLE..=num::TYPE_SINT64) => ty,
            Some(ty) => return Err(at(format!("unknown field type {}", ty as i32))),
            // Lowering must know message from enum, and only resolved descriptors (as protoc
            // and reflection servers write them) say so without a symbol table.
            None if type_name.is_some() => {
                return Err(at(
                    "has a type_name but no type; the descriptors must have every type resolved, as protoc writes them"
                        .to_owned(),
                ));
            }
            None => num::TYPE_DOUBLE,
        };
        // oneof_index is an int32; a bad one is prost-reflect's to report.
        let in_oneof = oneof_index.is_some() && !scope.extension;
        let inherited = oneof_index
            .filter(|_| in_oneof)
            .and_then(|i| usize::try_from(i as i32).ok())
            .and_then(|i| scope.oneofs.get(i))
            .unwrap_or(scope.parent);
        let features = inherited
            .merged(&options, num::FEATURES_FIELD)
            .map_err(at)?;

        let repeated = label == num::LABEL_REPEATED;
        let is_message = ty == num::TYPE_MESSAGE || ty == num::TYPE_GROUP;
        let to_map_entry = ty == num::TYPE_MESSAGE
            && type_name
                .and_then(|n| std::str::from_utf8(n).ok())
                .is_some_and(|n| scope.map_entries.contains(n));
        // Maps, and the fields of their entries, stay length-prefixed under DELIMITED, as protobuf
        // writes them (the tests compare with protoc's own encoding).
        let group =
            ty == num::TYPE_MESSAGE && features.delimited && !scope.in_map_entry && !to_map_entry;
        let packable = !matches!(
            ty,
            num::TYPE_STRING | num::TYPE_GROUP | num::TYPE_MESSAGE | num::TYPE_BYTES
        );
        let packed = (repeated && packable).then_some(features.packed);
        // Only singular fields outside oneofs, extensions and map entries have a presence to
        // choose; protoc refuses a presence feature anywhere else, so it is ignored there.
        let plain = !repeated && !in_oneof && !scope.extension && !scope.in_map_entry;
        let required =
            plain && features.presence == Presence::LegacyRequired && label == num::LABEL_OPTIONAL;
        let mut synthetic_index = None;
        if plain && !is_message {
            match (features.presence, self.target) {
                (Presence::Implicit, Target::Proto2) => {
                    self.implicit.get_or_insert_with(|| full.clone());
                }
                (Presence::Explicit | Presence::LegacyRequired, Target::Proto3) => {
                    synthetic_index = Some(synthetic.allocate(&name).map_err(at)?);
                }
                _ => {}
            }
        }

        let mut out = Vec::with_capacity(bytes.len() + 8);
        for record in &records {
            let replaced = match record.number {
                num::FIELD_LABEL => required,
                num::FIELD_TYPE => group,
                num::FIELD_OPTIONS => true,
                num::FIELD_ONEOF_INDEX | num::FIELD_PROTO3_OPTIONAL => synthetic_index.is_some(),
                _ => false,
            };
            if !replaced {
                out.extend_from_slice(record.raw);
            }
        }
        if required {
            wire::put_varint_field(&mut out, num::FIELD_LABEL, num::LABEL_REQUIRED);
        }
        if group {
            wire::put_varint_field(&mut out, num::FIELD_TYPE, num::TYPE_GROUP);
        }
        // The options records merge into one; `packed` (not allowed in editions) is replaced by
        // what the features resolve to.
        let mut field_options = Vec::new();
        for options in &options {
            for record in wire::parse(options).map_err(at)? {
                if record.number == num::FEATURES_FIELD {
                    check_features(record.bytes().map_err(at)?).map_err(at)?;
                } else if record.number != num::FIELD_OPTIONS_PACKED {
                    field_options.extend_from_slice(record.raw);
                }
            }
        }
        if let Some(packed) = packed {
            wire::put_varint_field(
                &mut field_options,
                num::FIELD_OPTIONS_PACKED,
                u64::from(packed),
            );
        }
        if !field_options.is_empty() {
            wire::put_len(&mut out, num::FIELD_OPTIONS, &field_options);
        }
        if let Some(index) = synthetic_index {
            wire::put_varint_field(&mut out, num::FIELD_ONEOF_INDEX, index as u64);
            wire::put_varint_field(&mut out, num::FIELD_PROTO3_OPTIONAL, 1);
        }
        Ok(out)
    }
}
