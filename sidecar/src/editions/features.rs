use super::{num, wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    Explicit,
    Implicit,
    LegacyRequired,
}

/// The resolved features that matter to the lowering; the others are only checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Features {
    pub(super) presence: Presence,
    pub(super) closed_enum: bool,
    pub(super) packed: bool,
    pub(super) delimited: bool,
}

impl Features {
    /// 2023 and 2024 agree on every feature with a wire effect.
    pub(super) const EDITION_2023: Features = Features {
        presence: Presence::Explicit,
        closed_enum: false,
        packed: true,
        delimited: false,
    };

    pub(super) fn for_edition(edition: i32) -> Option<Features> {
        match edition {
            num::EDITION_2023 | num::EDITION_2024 => Some(Self::EDITION_2023),
            _ => None,
        }
    }

    /// These features, overridden by the `features` of each options record in turn (repeated
    /// records of a message field merge, so the last value set wins).
    pub(super) fn merged(
        mut self,
        options: &[&[u8]],
        features_field: u32,
    ) -> Result<Features, String> {
        for options in options {
            for record in wire::parse(options)? {
                if record.number == features_field {
                    self.apply(record.bytes()?)?;
                }
            }
        }
        Ok(self)
    }

    /// Applies one FeatureSet. Unknown values are refused as protoc refuses them; features this
    /// does not know (language extensions, source-only features) have no wire effect.
    pub(super) fn apply(&mut self, feature_set: &[u8]) -> Result<(), String> {
        for record in wire::parse(feature_set)? {
            let known = |name: &str, value: u64, valid: &[u64]| {
                if valid.contains(&value) {
                    Ok(value)
                } else {
                    Err(format!(
                        "features.{name} has unknown value {}",
                        value as i32
                    ))
                }
            };
            match record.number {
                num::FEATURE_FIELD_PRESENCE => {
                    self.presence = match known("field_presence", record.varint()?, &[1, 2, 3])? {
                        1 => Presence::Explicit,
                        2 => Presence::Implicit,
                        _ => Presence::LegacyRequired,
                    }
                }
                num::FEATURE_ENUM_TYPE => {
                    self.closed_enum = known("enum_type", record.varint()?, &[1, 2])? == 2;
                }
                num::FEATURE_REPEATED_FIELD_ENCODING => {
                    self.packed = known("repeated_field_encoding", record.varint()?, &[1, 2])? == 1;
                }
                num::FEATURE_UTF8_VALIDATION => {
                    known("utf8_validation", record.varint()?, &[2, 3])?;
                }
                num::FEATURE_MESSAGE_ENCODING => {
                    self.delimited = known("message_encoding", record.varint()?, &[1, 2])? == 2;
                }
                num::FEATURE_JSON_FORMAT => {
                    known("json_format", record.varint()?, &[1, 2])?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

pub(super) fn edition_name(edition: i32) -> String {
    let name = match edition {
        0 => "EDITION_UNKNOWN",
        900 => "EDITION_LEGACY",
        998 => "EDITION_PROTO2",
        999 => "EDITION_PROTO3",
        1000 => "EDITION_2023",
        1001 => "EDITION_2024",
        1002 => "EDITION_2026",
        9999 => "EDITION_UNSTABLE",
        1 => "EDITION_1_TEST_ONLY",
        2 => "EDITION_2_TEST_ONLY",
        99997 => "EDITION_99997_TEST_ONLY",
        99998 => "EDITION_99998_TEST_ONLY",
        99999 => "EDITION_99999_TEST_ONLY",
        i32::MAX => "EDITION_MAX",
        _ => return edition.to_string(),
    };
    format!("{name} ({edition})")
}
