use std::collections::HashSet;

use super::*;

#[test]
fn unsupported_editions_are_refused_by_name() {
    let err = lower_set(&compile_source(
        "edition = \"2026\";\npackage x;\nmessage M {}\n",
    ))
    .expect_err("2026 is not supported");
    assert!(
        err.contains("file `inline.proto`")
            && err.contains("EDITION_2026 (1002)")
            && err.contains("supported editions: 2023, 2024"),
        "{err}"
    );
    for (edition, name) in [(99997, "EDITION_99997_TEST_ONLY (99997)"), (1234, "1234")] {
        let err = lower_set(&set_of(&[editions_file("x.proto", edition, &[])]))
            .expect_err("unknown edition");
        assert!(err.contains(name), "{err}");
    }
    let no_edition = [
        text(num::FILE_NAME, "x.proto"),
        text(num::FILE_SYNTAX, "editions"),
    ]
    .concat();
    let err = lower_file(&no_edition).expect_err("no edition");
    assert!(err.contains("no edition"), "{err}");
    let bad_feature = editions_file(
        "x.proto",
        1000,
        &[len(
            num::FILE_OPTIONS,
            &presence_option(num::FEATURES_FILE, 9),
        )],
    );
    let err = lower_file(&bad_feature).expect_err("unknown feature value");
    assert!(
        err.contains("features.field_presence has unknown value 9"),
        "{err}"
    );
}

#[test]
fn what_proto3_cannot_hold_next_to_implicit_fields_is_an_error() {
    let err = lower_set(&compile_source(
        r#"
        edition = "2023";
        package x;
        message M { int32 n = 1 [features.field_presence = IMPLICIT]; }
        enum Closed { option features.enum_type = CLOSED; CLOSED_ONE = 1; }
        "#,
    ))
    .expect_err("closed enum starting at 1 in a proto3 target");
    assert!(
        err.contains("enum `x.Closed`") && err.contains("CLOSED") && err.contains("`x.M.n`"),
        "{err}"
    );
    // Without IMPLICIT fields the same enum lowers to proto2 and loads.
    load(&compile_source(
        r#"
        edition = "2023";
        package x;
        message M { int32 n = 1; }
        enum Closed { option features.enum_type = CLOSED; CLOSED_ONE = 1; }
        "#,
    ));

    let conflict = editions_file(
        "x.proto",
        1000,
        &[
            len(num::FILE_OPTIONS, &presence_option(num::FEATURES_FILE, 2)),
            len(
                num::FILE_MESSAGE_TYPE,
                &[
                    text(num::MESSAGE_NAME, "M"),
                    len(num::MESSAGE_FIELD, &scalar("foo_bar", 1, &[])),
                    len(num::MESSAGE_FIELD, &scalar("foobar", 2, &[])),
                ]
                .concat(),
            ),
        ],
    );
    let err = lower_file(&conflict).expect_err("camel-case conflict in proto3");
    assert!(err.contains("`foo_bar` and `foobar`"), "{err}");
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    let set = compile(&["presence.proto", "explicit.proto"]);
    let boundaries: HashSet<usize> = wire::parse(&set)
        .expect("valid set")
        .iter()
        .scan(0, |end, r| {
            *end += r.raw.len();
            Some(*end)
        })
        .chain([0])
        .collect();
    for cut in 0..set.len() {
        let result = lower_set(&set[..cut]);
        assert_eq!(
            result.is_ok(),
            boundaries.contains(&cut),
            "prefix of {cut} bytes: {result:?}"
        );
    }
    let file = raw_files(&compile(&["presence.proto"]))
        .pop()
        .expect("presence.proto comes last");
    assert!(lower_file(&file).is_ok());
    for cut in 0..file.len() {
        let _ = lower_file(&file[..cut]);
    }

    // Byte flips of a valid set, and bytes from a fixed-seed generator.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut mutated = set.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % mutated.len() as u64) as usize;
            mutated[at] = next() as u8;
        }
        let _ = lower_set(&mutated);
        let noise: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
        let _ = lower_set(&noise);
        let _ = lower_file(&noise);
    }
    assert!(lower_set(&[0xff; 16]).is_err());
    assert!(lower_set(&[0x0a, 0x05, 0x01]).is_err());
}

#[test]
fn deep_nesting_is_bounded() {
    let mut nested = text(num::MESSAGE_NAME, "M");
    for _ in 0..MAX_DEPTH + 5 {
        nested = [
            text(num::MESSAGE_NAME, "M"),
            len(num::MESSAGE_NESTED_TYPE, &nested),
        ]
        .concat();
    }
    let file = editions_file("deep.proto", 1000, &[len(num::FILE_MESSAGE_TYPE, &nested)]);
    let err = lower_file(&file).expect_err("too deep");
    assert!(err.contains("deeper than"), "{err}");

    // Unknown groups nested without end inside a message.
    let mut groups = vec![(99 << 3) | 3; 10_000];
    groups.push(0);
    let file = editions_file(
        "groups.proto",
        1000,
        &[len(num::FILE_MESSAGE_TYPE, &groups)],
    );
    assert!(lower_file(&file).is_err());
}
