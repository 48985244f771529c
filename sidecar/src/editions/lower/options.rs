use crate::editions::{
    features::Features,
    num,
    records::{last, name_of},
    wire,
};

pub(super) fn service(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let records = wire::parse(bytes)?;
    let at = |e: String| {
        let name = name_of(&records, 1).unwrap_or_default();
        format!("service `{name}`: {e}")
    };
    let mut out = Vec::with_capacity(bytes.len());
    for record in &records {
        match record.number {
            num::SERVICE_METHOD => {
                let method = without_features(
                    record.bytes().map_err(at)?,
                    num::METHOD_OPTIONS,
                    num::FEATURES_METHOD,
                )
                .map_err(at)?;
                wire::put_len(&mut out, num::SERVICE_METHOD, &method);
            }
            num::SERVICE_OPTIONS => put_options(
                &mut out,
                num::SERVICE_OPTIONS,
                record.bytes().map_err(at)?,
                num::FEATURES_SERVICE,
            )
            .map_err(at)?,
            _ => out.extend_from_slice(record.raw),
        }
    }
    Ok(out)
}

/// Checks a FeatureSet that is only removed, so bad values are reported wherever they are.
pub(super) fn check_features(feature_set: &[u8]) -> Result<(), String> {
    let mut scratch = Features::EDITION_2023;
    scratch.apply(feature_set)
}

/// Writes an options record without its `features`, or nothing if nothing else is left.
pub(super) fn put_options(
    out: &mut Vec<u8>,
    number: u32,
    options: &[u8],
    features_field: u32,
) -> Result<(), String> {
    let mut kept = Vec::with_capacity(options.len());
    for record in wire::parse(options)? {
        if record.number == features_field {
            check_features(record.bytes()?)?;
        } else {
            kept.extend_from_slice(record.raw);
        }
    }
    if !kept.is_empty() {
        wire::put_len(out, number, &kept);
    }
    Ok(())
}

/// A descriptor whose only change is dropping the `features` from its options.
pub(super) fn without_features(
    bytes: &[u8],
    options_field: u32,
    features_field: u32,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    for record in wire::parse(bytes)? {
        if record.number == options_field {
            put_options(&mut out, options_field, record.bytes()?, features_field)?;
        } else {
            out.extend_from_slice(record.raw);
        }
    }
    Ok(out)
}

pub(super) fn is_map_entry(options: &[&[u8]]) -> Result<bool, String> {
    let mut map_entry = false;
    for options in options {
        if let Some(record) = last(&wire::parse(options)?, num::MESSAGE_OPTIONS_MAP_ENTRY) {
            map_entry = record.varint()? != 0;
        }
    }
    Ok(map_entry)
}
