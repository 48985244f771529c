//! The differential checks as property tests (proptest, in the default test run), a coverage
//! test that proves they compare real values, and the replay of the fuzz corpus.

use std::sync::LazyLock;

use proptest::prelude::*;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::*;

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::new);

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn offsets_read_as_the_decoder_reads_them(entropy in proptest::collection::vec(any::<u8>(), 0..768)) {
        check_offsets(&SCHEMA, &entropy).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn raw_bytes_read_as_the_decoder_reads_them(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_offsets_raw(&SCHEMA, &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn the_resume_rewrite_decodes_as_the_field_set(entropy in proptest::collection::vec(any::<u8>(), 0..768)) {
        check_rewrite(&SCHEMA, &entropy).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn the_filter_forwards_what_the_decoder_model_keeps(entropy in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_filter(&SCHEMA, &entropy).map_err(TestCaseError::fail)?;
    }
}

/// The checks would pass vacuously if the generator only made messages the decoder rejects,
/// or only messages where every leaf is absent or default. With fixed seeds, each path is the
/// generator's focus for a while, and must then have been compared on values really on the
/// wire, on absences where its presence is explicit, and on some rejected messages.
#[test]
fn the_generated_inputs_reach_every_path_with_values_and_absences() {
    let schema = &*SCHEMA;
    let mut rng = StdRng::seed_from_u64(10);
    let (mut accepted, mut rejected) = (0, 0);
    for (index, path) in schema.paths.iter().enumerate() {
        let (mut values, mut absent) = (0, 0);
        for _ in 0..200 {
            let len = rng.random_range(0..512);
            let entropy: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // What the decoder reads at this path, for the tallies.
            let mut e = Entropy::new(&entropy);
            let mut bytes = Vec::new();
            generate::message(
                &mut e,
                &path.root,
                &schema.wire_paths[index].numbers(),
                0,
                &mut bytes,
            );
            match DynamicMessage::decode(path.root.clone(), bytes.as_slice()) {
                Err(_) => rejected += 1,
                Ok(msg) => {
                    accepted += 1;
                    match reference::offset_in(&msg, &path.fields) {
                        None => absent += 1,
                        Some(Offset::Int(0)) => {}
                        Some(Offset::Str(b) | Offset::Bytes(b)) if b.is_empty() => {}
                        Some(_) => values += 1,
                    }
                }
            }
            // And the comparison itself, on the same input.
            let mut e = Entropy::new(&entropy);
            check_offsets_focused(schema, index, &mut e).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            values >= 8,
            "{}: only {values} values on the wire",
            path.name
        );
        let explicit = path.fields.last().is_some_and(|f| f.supports_presence());
        if explicit {
            assert!(absent >= 8, "{}: only {absent} absences", path.name);
        } else {
            assert_eq!(
                absent, 0,
                "{}: implicit presence is never absent",
                path.name
            );
        }
    }
    assert!(
        accepted > 2 * rejected && rejected > 0,
        "most generated messages decode, some do not: {accepted} accepted, {rejected} rejected"
    );
}

/// Every input a fuzz target ever kept (`fuzz/corpus/<target>/`) runs again here, so CI
/// re-checks each one, including those that once crashed.
#[test]
fn the_fuzz_corpus_replays_clean() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let schema = &*SCHEMA;
    type Check<'a> = &'a dyn Fn(&[u8]) -> Result<Tally, String>;
    let targets: [(&str, Check); 6] = [
        ("offset_reader", &|d| check_offsets(schema, d)),
        ("offset_raw", &|d| check_offsets_raw(schema, d)),
        ("request_rewrite", &|d| check_rewrite(schema, d)),
        ("frame_filter", &|d| check_filter(schema, d)),
        ("config_parse", &check_config),
        ("descriptor_loading", &check_descriptors),
    ];
    for (target, check) in targets {
        let dir = corpus.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus {} is in the repository: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries.flatten() {
            let input = std::fs::read(entry.path()).unwrap_or_default();
            check(&input).unwrap_or_else(|e| panic!("{target} {}: {e}", entry.path().display()));
            replayed += 1;
        }
        assert!(replayed > 0, "{target}: no corpus in {}", dir.display());
    }
}
