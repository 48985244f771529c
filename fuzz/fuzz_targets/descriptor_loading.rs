//! Loading descriptors must never crash, whatever the bytes (`conformance::check_descriptors`):
//! the input goes through the sidecar's two start-up paths, as a `descriptors:` file (editions
//! lowering, the guard against what prost-reflect crashes on, prost-reflect) and as one file
//! from server reflection. An error is fine; a panic or an abort is a finding.
//!
//! This target found two crashes of prost-reflect 0.16.5 itself (an unknown `syntax` panics;
//! a cycle of public imports overflows the stack): `descriptors::guard` refuses both now
//! (docs/fuzzing.md, "Findings"), and their inputs stay in the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = conformance::check_descriptors(data) {
        panic!("descriptor_loading: {finding}");
    }
});
