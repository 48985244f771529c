//! The gRPC frame filter against a model: generated messages framed as gRPC, cut into chunks
//! of generated sizes (1 to 64 bytes) and resumed after a generated offset; what it forwards,
//! drops and counts must be what the model says.
//!
//! A disagreement (`Err`) is a finding: the target panics with it so libFuzzer keeps the
//! input. Every kept input is replayed by `cargo test -p reprise-sidecar --lib conformance`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance::{self, schema::Schema};

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::new);

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = conformance::check_filter(&SCHEMA, data) {
        panic!("frame_filter: {disagreement}");
    }
});
