//! The offset reader against prost-reflect on raw bytes: the input itself is read as every
//! root message of the schema; wherever the decoder accepts it, the offset reader must read
//! exactly the decoder's value on every path and never reject it.
//!
//! A disagreement (`Err`) is a finding: the target panics with it so libFuzzer keeps the
//! input. Every kept input is replayed by `cargo test -p reprise-sidecar --lib conformance`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance::{self, schema::Schema};

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::new);

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = conformance::check_offsets_raw(&SCHEMA, data) {
        panic!("offset_raw: {disagreement}");
    }
});
