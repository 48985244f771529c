//! The configuration parser must never panic, whatever the file and the environment say
//! (`conformance::check_config`: the input split at NUL bytes into the YAML text and up to 8
//! `REPRISE_<KEY>` overrides). An `Err` must carry at least one message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_sidecar::conformance;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = conformance::check_config(data) {
        panic!("config_parse: {finding}");
    }
});
