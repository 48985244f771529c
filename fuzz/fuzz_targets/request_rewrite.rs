//! The resume-field request rewriter against prost-reflect: a generated request with the
//! resume field set to a generated value must decode to the original with that field set, and
//! read back exactly; a value that does not fit must be refused.
//!
//! A disagreement (`Err`) is a finding: the target panics with it so libFuzzer keeps the
//! input. Every kept input is replayed by `cargo test -p reprise-sidecar --lib conformance`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance::{self, schema::Schema};

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::new);

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = conformance::check_rewrite(&SCHEMA, data) {
        panic!("request_rewrite: {disagreement}");
    }
});
