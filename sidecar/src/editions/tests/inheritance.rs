use super::*;

/// protoc only lets field_presence and message_encoding be set on files and fields, but
/// protobuf resolves features through every message and oneof, and descriptors from other
/// tools may set them there; hand-made descriptors check that inheritance.
#[test]
fn features_inherit_through_messages_nested_messages_and_oneofs() {
    let inner_message = [
        text(num::MESSAGE_NAME, "Inner"),
        len(num::MESSAGE_FIELD, &scalar("e", 1, &[])),
        len(
            num::MESSAGE_NESTED_TYPE,
            &[
                text(num::MESSAGE_NAME, "Innermost"),
                len(
                    num::MESSAGE_OPTIONS,
                    &presence_option(num::FEATURES_MESSAGE, 3),
                ),
                len(num::MESSAGE_FIELD, &scalar("f", 1, &[])),
                len(
                    num::MESSAGE_FIELD,
                    &scalar("g", 2, &presence_option(num::FEATURES_FIELD, 2)),
                ),
            ]
            .concat(),
        ),
    ]
    .concat();
    let message_field = |name: &str, number: u64, oneof: Option<u64>| {
        let mut f = [
            text(num::FIELD_NAME, name),
            var(3, number),
            var(num::FIELD_LABEL, num::LABEL_OPTIONAL),
            var(num::FIELD_TYPE, num::TYPE_MESSAGE),
            text(num::FIELD_TYPE_NAME, ".hand.Outer.Inner"),
        ]
        .concat();
        if let Some(index) = oneof {
            f.extend(var(num::FIELD_ONEOF_INDEX, index));
        }
        f
    };
    let outer = [
        text(num::MESSAGE_NAME, "Outer"),
        len(
            num::MESSAGE_OPTIONS,
            &presence_option(num::FEATURES_MESSAGE, 1),
        ),
        len(num::MESSAGE_FIELD, &scalar("a", 1, &[])),
        len(
            num::MESSAGE_FIELD,
            &scalar("b", 2, &presence_option(num::FEATURES_FIELD, 2)),
        ),
        len(num::MESSAGE_FIELD, &message_field("c", 3, Some(0))),
        len(num::MESSAGE_FIELD, &message_field("d", 4, None)),
        len(num::MESSAGE_NESTED_TYPE, &inner_message),
        len(
            num::MESSAGE_ONEOF_DECL,
            &[
                text(num::ONEOF_NAME, "o"),
                len(
                    num::ONEOF_OPTIONS,
                    &len(num::FEATURES_ONEOF, &var(num::FEATURE_MESSAGE_ENCODING, 2)),
                ),
            ]
            .concat(),
        ),
    ]
    .concat();
    let other = [
        text(num::MESSAGE_NAME, "Other"),
        len(num::MESSAGE_FIELD, &scalar("h", 1, &[])),
    ]
    .concat();
    let file = editions_file(
        "hand.proto",
        1000,
        &[
            len(num::FILE_OPTIONS, &presence_option(num::FEATURES_FILE, 2)),
            len(num::FILE_MESSAGE_TYPE, &outer),
            len(num::FILE_MESSAGE_TYPE, &other),
        ],
    );
    let pool = load(&set_of(&[file]));
    assert_fields(
        &message(&pool, "hand.Outer"),
        &[
            ("a", true, false, false, "_a"),
            ("b", false, false, false, ""),
            ("c", true, true, false, "o"),
            ("d", true, false, false, ""),
        ],
    );
    assert_fields(
        &message(&pool, "hand.Outer.Inner"),
        &[("e", true, false, false, "_e")],
    );
    let innermost = message(&pool, "hand.Outer.Inner.Innermost");
    assert_fields(
        &innermost,
        &[
            ("f", true, false, false, "_f"),
            ("g", false, false, false, ""),
        ],
    );
    assert!(field(&innermost, "f").is_required());
    assert_fields(
        &message(&pool, "hand.Other"),
        &[("h", false, false, false, "")],
    );
}

/// protoc refuses LEGACY_REQUIRED as a file default, but the resolution allows it.
#[test]
fn file_level_legacy_required_applies_to_singular_fields_only() {
    let repeated = [
        text(num::FIELD_NAME, "r"),
        var(3, 2),
        var(num::FIELD_LABEL, num::LABEL_REPEATED),
        var(num::FIELD_TYPE, 5),
    ]
    .concat();
    let file = editions_file(
        "required.proto",
        1001,
        &[
            len(num::FILE_OPTIONS, &presence_option(num::FEATURES_FILE, 3)),
            len(
                num::FILE_MESSAGE_TYPE,
                &[
                    text(num::MESSAGE_NAME, "R"),
                    len(num::MESSAGE_FIELD, &scalar("q", 1, &[])),
                    len(num::MESSAGE_FIELD, &repeated),
                ]
                .concat(),
            ),
        ],
    );
    let pool = load(&set_of(&[file]));
    let r = message(&pool, "hand.R");
    assert_eq!(r.parent_file().syntax(), Syntax::Proto2);
    assert!(field(&r, "q").is_required() && field(&r, "q").supports_presence());
    assert!(!field(&r, "r").is_required());
    assert!(field(&r, "r").is_packed());
}
