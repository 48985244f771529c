//! The offset reader against prost-reflect: the input is an entropy recipe for an adversarial
//! message (non-canonical, merged, over-long, sometimes broken); the sidecar's offset reader
//! must read exactly what the full decoder reads, on every path, as written and re-encoded.
//!
//! A disagreement (`Err`) is a finding: the target panics with it so libFuzzer keeps the
//! input. Every kept input is replayed by `cargo test -p reprise-sidecar --lib conformance`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance::{self, schema::Schema};

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::new);

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = conformance::check_offsets(&SCHEMA, data) {
        panic!("offset_reader: {disagreement}");
    }
});
