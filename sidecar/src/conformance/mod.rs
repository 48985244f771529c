//! Differential conformance: the sidecar's own protobuf wire code against a full decoder.
//!
//! The hot path reads offsets without decoding messages ([`crate::offset`]) and a resume
//! appends one field to the app's request ([`crate::request::with_resume`]). Both must mean
//! exactly what `prost_reflect::DynamicMessage` makes of the same bytes. The checks here take
//! a recipe of entropy bytes, make adversarial inputs from it over the schemas in [`schema`],
//! and compare; the property tests (below) run them with proptest and the fuzz targets (in
//! `fuzz/`, built with the `conformance` feature) run them under libFuzzer.
//!
//! The rule for inputs the decoder rejects: the sidecar may reject them too or read them (it
//! never looks at fields off the path, so a message broken elsewhere is forwarded for the
//! app's own decoder to judge), but whatever it reads from a message the decoder accepts must
//! be exactly the decoder's value, and it must never reject a message the decoder accepts.

pub mod generate;
pub mod reference;
pub mod schema;

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind};

use crate::{
    config, descriptors,
    filter::Filter,
    grpc::Deframer,
    metrics::{Metrics, ReasonLabels},
    offset::{self, Offset},
    request,
};
use generate::Entropy;
use schema::Schema;

/// What a run of checks compared, so a test can tell a real comparison from a vacuous one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Inputs the decoder rejected (only "no panic" is checked there).
    pub rejected: usize,
    /// Comparisons where the decoder read a value (present, or an implicit default).
    pub values: usize,
    /// Comparisons where the decoder read "not set" (explicit presence).
    pub absent: usize,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.rejected += other.rejected;
        self.values += other.values;
        self.absent += other.absent;
    }
}

/// The offset reader against the decoder on one message, every path from `root_index`'s
/// message (`None`: every path of every root).
fn compare_all(schema: &Schema, root: Option<usize>, bytes: &[u8]) -> Result<Tally, String> {
    let roots = schema.roots();
    let mut tally = Tally::default();
    let owned = Bytes::copy_from_slice(bytes);
    for (i, desc) in roots.iter().enumerate() {
        if root.is_some_and(|r| r != i) {
            continue;
        }
        let decoded = DynamicMessage::decode(desc.clone(), bytes);
        for (path, wire) in schema.paths.iter().zip(&schema.wire_paths) {
            if &path.root != desc {
                continue;
            }
            let ours = offset::extract(&owned, wire);
            match &decoded {
                Err(_) => tally.rejected += 1,
                Ok(msg) => {
                    let theirs = reference::offset_in(msg, &path.fields);
                    if ours.as_ref() != Ok(&theirs) {
                        return Err(format!(
                            "{}: the decoder reads {theirs:?}, the sidecar {ours:?}, in {}",
                            path.name,
                            hex::encode(bytes)
                        ));
                    }
                    match theirs {
                        Some(_) => tally.values += 1,
                        None => tally.absent += 1,
                    }
                }
            }
        }
    }
    Ok(tally)
}

/// A generated message, as written and as a canonical encoder re-writes it: the offset reader
/// must agree with the decoder on both, on every path from the message's root.
pub fn check_offsets(schema: &Schema, entropy: &[u8]) -> Result<Tally, String> {
    let mut e = Entropy::new(entropy);
    let index = e.below(schema.paths.len());
    check_offsets_focused(schema, index, &mut e)
}

/// `check_offsets` with the generator favouring the fields of path `index`.
pub fn check_offsets_focused(
    schema: &Schema,
    index: usize,
    e: &mut Entropy,
) -> Result<Tally, String> {
    let roots = schema.roots();
    let root = roots
        .iter()
        .position(|r| *r == schema.paths[index].root)
        .ok_or("path without its root")?;
    let mut bytes = Vec::new();
    let focus = schema.wire_paths[index].numbers();
    generate::message(e, &roots[root], &focus, 0, &mut bytes);
    let mut tally = compare_all(schema, Some(root), &bytes)?;
    if let Ok(msg) = DynamicMessage::decode(roots[root].clone(), bytes.as_slice()) {
        tally.add(compare_all(schema, Some(root), &msg.encode_to_vec())?);
    }
    Ok(tally)
}

/// Arbitrary bytes (a fuzzer's own input), read as every root message.
pub fn check_offsets_raw(schema: &Schema, bytes: &[u8]) -> Result<Tally, String> {
    compare_all(schema, None, bytes)
}

/// A value for a field of `kind`, often out of its range or not UTF-8.
fn offset_for(e: &mut Entropy, kind: &Kind) -> Offset {
    match kind {
        Kind::String => Offset::Str(generated_text(e, true)),
        Kind::Bytes => Offset::Bytes(generated_text(e, false)),
        _ => {
            let v = e.interesting();
            Offset::Int(if e.chance(50) {
                i128::from(v as i64)
            } else {
                i128::from(v)
            })
        }
    }
}

/// Short text that sorts in interesting ways; not always UTF-8.
fn generated_text(e: &mut Entropy, utf8: bool) -> Bytes {
    let mut out = Vec::new();
    for _ in 0..e.below(4) {
        out.extend_from_slice(["", "a", "é", "\u{10348}", "z0"][e.below(5)].as_bytes());
    }
    if !utf8 || e.chance(5) {
        out.push(e.byte());
    }
    out.into()
}

/// The resume rewrite against the decoder: a generated request (one the decoder accepts) with
/// the field at a generated path set to a generated value must decode to the original with
/// that field set as generated code sets it, and the value must read back exactly.
pub fn check_rewrite(schema: &Schema, entropy: &[u8]) -> Result<Tally, String> {
    let mut e = Entropy::new(entropy);
    let index = e.below(schema.paths.len());
    let path = &schema.paths[index];
    let mut original = Vec::new();
    let focus = schema.wire_paths[index].numbers();
    generate::message(&mut e, &path.root, &focus, 0, &mut original);
    let Ok(msg) = DynamicMessage::decode(path.root.clone(), original.as_slice()) else {
        return Ok(Tally {
            rejected: 1,
            ..Tally::default()
        });
    };
    let leaf = path.fields.last().map(|f| f.kind()).ok_or("empty path")?;
    let value = offset_for(&mut e, &leaf);
    let ours = request::with_resume(&path.fields, &original, &value);
    let expected = reference::with_field(&msg, &path.fields, &value);
    let fail = |what: String| format!("{}: {what}; request {}", path.name, hex::encode(&original));
    match (ours, expected) {
        (Err(_), None) => Ok(Tally {
            absent: 1,
            ..Tally::default()
        }),
        (Ok(b), None) => Err(fail(format!(
            "{value:?} does not fit, yet the rewrite wrote {}",
            hex::encode(&b)
        ))),
        (Err(err), Some(_)) => Err(fail(format!(
            "{value:?} fits, yet the rewrite failed: {err}"
        ))),
        (Ok(bytes), Some(expected)) => {
            let got = DynamicMessage::decode(path.root.clone(), bytes.as_ref())
                .map_err(|err| fail(format!("the rewritten request does not decode: {err}")))?;
            reference::same(&got, &expected)
                .map_err(|d| fail(format!("rewritten with {value:?}: {d}")))?;
            let read = reference::offset_in(&got, &path.fields);
            if read.as_ref() != Some(&value) {
                return Err(fail(format!("wrote {value:?}, the server reads {read:?}")));
            }
            Ok(Tally {
                values: 1,
                ..Tally::default()
            })
        }
    }
}

/// The frame filter against a model built on the decoder: generated messages (ones the
/// decoder accepts) framed as gRPC, cut into chunks of generated sizes, resumed after a
/// generated offset. What the filter forwards, drops and counts must be what the model says.
pub fn check_filter(schema: &Schema, entropy: &[u8]) -> Result<Tally, String> {
    let mut e = Entropy::new(entropy);
    let index = e.below(schema.paths.len());
    let (path, wire) = (&schema.paths[index], &schema.wire_paths[index]);
    // The messages, with the offset the decoder reads in each.
    let mut messages: Vec<(Vec<u8>, Option<Offset>)> = Vec::new();
    while messages.len() < 1 + e.below(12) && !e.exhausted() {
        let mut bytes = Vec::new();
        generate::message(&mut e, &path.root, &wire.numbers(), 0, &mut bytes);
        if let Ok(msg) = DynamicMessage::decode(path.root.clone(), bytes.as_slice()) {
            messages.push((bytes, reference::offset_in(&msg, &path.fields)));
        }
    }
    let start = messages
        .get(e.below(messages.len() + 1))
        .and_then(|(_, o)| o.clone());
    let metrics = Metrics::default();
    let method = "conformance/Filter";
    let mut filter = Filter::new(
        method,
        wire.clone(),
        path.name.clone(),
        "job".into(),
        &metrics,
        start.clone(),
        0,
    );
    filter.start_attempt(false);
    // The model: what a filter in front of an exact decoder forwards.
    let mut expect = Vec::new();
    let (mut last, mut kept, mut duplicates, mut out_of_order, mut fails) =
        (start, 0u64, 0u64, 0u64, false);
    let mut stream = BytesMut::new();
    for (bytes, offset) in &messages {
        stream.put_u8(0);
        stream.put_u32(bytes.len() as u32);
        stream.extend_from_slice(bytes);
        if fails {
            continue;
        }
        let Some(offset) = offset else {
            fails = true;
            continue;
        };
        if last.as_ref().is_none_or(|l| offset > l) {
            expect.put_u8(0);
            expect.put_u32(bytes.len() as u32);
            expect.extend_from_slice(bytes);
            last = Some(offset.clone());
            kept += 1;
        } else if kept == 0 {
            duplicates += 1;
        } else {
            out_of_order += 1;
        }
    }
    let stream = stream.freeze();
    let mut deframer = Deframer::new(1 << 20);
    let mut out = VecDeque::new();
    let mut error = None;
    let mut pos = 0;
    while pos < stream.len() {
        let size = 1 + e.below(64);
        let end = (pos + size).min(stream.len());
        if let Err(err) = filter.push(stream.slice(pos..end), &mut deframer, &mut out) {
            error = Some(err);
            break;
        }
        pos = end;
    }
    let forwarded: Vec<u8> = out
        .into_iter()
        .flat_map(|c| c.frame.into_data().map(|d| d.to_vec()).unwrap_or_default())
        .collect();
    let count = |reason| {
        metrics
            .dropped
            .get_or_create(&ReasonLabels {
                method: method.to_owned(),
                reason,
            })
            .get()
    };
    let report = |what: &str| {
        format!(
            "{}: {what}; messages {:?}",
            path.name,
            messages
                .iter()
                .map(|(b, o)| (hex::encode(b), o.clone()))
                .collect::<Vec<_>>()
        )
    };
    if forwarded != expect {
        return Err(report(&format!(
            "forwarded {} bytes, the model {} (error {error:?})",
            forwarded.len(),
            expect.len()
        )));
    }
    if fails != error.is_some() {
        return Err(report(&format!(
            "the model fails: {fails}, the filter: {error:?}"
        )));
    }
    if filter.last != last || filter.messages != kept {
        return Err(report(&format!(
            "position {:?}/{} vs the model's {last:?}/{kept}",
            filter.last, filter.messages
        )));
    }
    if count("duplicate") != duplicates || count("out_of_order") != out_of_order {
        return Err(report(&format!(
            "dropped {}/{} (duplicate/out of order) vs the model's {duplicates}/{out_of_order}",
            count("duplicate"),
            count("out_of_order")
        )));
    }
    Ok(Tally {
        values: messages.len(),
        absent: usize::from(fails),
        ..Tally::default()
    })
}

/// The configuration parser on any input: never a panic, and an error always says something.
/// The input is split at NUL bytes: the YAML file's text, then up to 8 `REPRISE_<KEY>`
/// overrides (a first byte that picks the key from `config::KEYS`, or `POD_NAME` after the
/// last one, then the value), all read as UTF-8 lossily.
pub fn check_config(data: &[u8]) -> Result<Tally, String> {
    let mut parts = data.split(|b| *b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut env = std::collections::BTreeMap::new();
    for part in parts.take(8) {
        let Some((&pick, value)) = part.split_first() else {
            continue;
        };
        let pick = usize::from(pick) % (config::KEYS.len() + 1);
        let name = match config::KEYS.get(pick) {
            Some(key) => format!("REPRISE_{}", key.to_uppercase()),
            None => "POD_NAME".to_owned(),
        };
        env.insert(name, String::from_utf8_lossy(value).into_owned());
    }
    match config::Config::parse(&text, &env) {
        Ok(config) => {
            let _ = format!("{config:?}");
            Ok(Tally {
                values: 1,
                ..Tally::default()
            })
        }
        Err(errors) if errors.0.is_empty() => Err("a config error without a message".into()),
        Err(errors) => {
            let _ = errors.to_string();
            Ok(Tally {
                rejected: 1,
                ..Tally::default()
            })
        }
    }
}

/// Descriptor loading on any input, through both start-up paths: as a `descriptors:` file and
/// as one file from server reflection. An error is fine; a panic (even one the guard's
/// `catch_unwind` turned into an error) or an abort is what this exists to catch.
pub fn check_descriptors(data: &[u8]) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let outcomes = [
        descriptors::pool_from_bytes(data).map(drop),
        descriptors::file_from_reflection(data)
            .and_then(|file| descriptors::guard::pool(vec![file]))
            .map(drop),
    ];
    for outcome in outcomes {
        match outcome {
            Ok(()) => tally.values += 1,
            // Caught, but a panic all the same: the guard should have refused this first.
            Err(e) if e.starts_with(descriptors::guard::PANICKED) => {
                return Err(format!(
                    "prost-reflect panicked on {}: {e}",
                    hex::encode(data)
                ));
            }
            Err(_) => tally.rejected += 1,
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests;
