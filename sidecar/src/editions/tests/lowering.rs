use super::*;

#[test]
fn implicit_file_lowers_to_proto3_with_synthetic_oneofs() {
    let pool = load(&compile(&["presence.proto"]));
    let file = pool
        .get_file_by_name("presence.proto")
        .expect("presence.proto");
    assert_eq!(file.syntax(), Syntax::Proto3);
    assert_eq!(
        file.dependencies()
            .map(|d| d.name().to_owned())
            .collect::<Vec<_>>(),
        ["common.proto"]
    );
    assert_eq!(
        pool.get_file_by_name("common.proto")
            .expect("imported")
            .syntax(),
        Syntax::Proto3
    );

    let m = message(&pool, &format!("{V1}.Presence"));
    assert_fields(
        &m,
        &[
            ("implicit_int", false, false, false, ""),
            ("explicit_int", true, false, false, "_explicit_int"),
            ("required_int", true, false, false, "_required_int"),
            ("implicit_str", false, false, false, ""),
            ("explicit_str", true, false, false, "_explicit_str"),
            ("stamp", true, false, false, ""),
            ("packed", false, false, true, ""),
            ("expanded", false, false, false, ""),
            ("names", false, false, false, ""),
            ("choice_int", true, false, false, "choice"),
            ("choice_str", true, false, false, "choice"),
            ("choice_nested", true, true, false, "choice"),
            ("color", false, false, false, ""),
            ("counts", false, false, false, ""),
            ("nested", true, true, false, ""),
            ("nested_list", false, true, false, ""),
            ("explicit_default", true, false, false, "_explicit_default"),
        ],
    );
    assert!(field(&m, "required_int").is_required());
    assert!(!field(&m, "explicit_int").is_required());
    assert_eq!(field(&m, "explicit_str").json_name(), "explicitText");
    assert_eq!(field(&m, "implicit_int").json_name(), "implicitInt");
    assert_eq!(field(&m, "explicit_default").default_value(), Value::U64(7));
    assert!(field(&m, "counts").is_map());
    assert!(field(&m, "nested_list").is_list());
    assert!(
        matches!(field(&m, "color").kind(), Kind::Enum(e) if e.full_name() == format!("{V1}.Color"))
    );
    assert!(
        matches!(field(&m, "stamp").kind(), Kind::Message(s) if s.full_name() == "reprise.common.v1.Stamp")
    );
    assert!(
        matches!(field(&m, "nested").kind(), Kind::Message(n) if n.full_name() == format!("{V1}.Presence.Nested"))
    );
    // The real oneof keeps its index; the synthetic ones follow, as protoc orders them.
    let oneofs: Vec<(String, bool)> = m
        .oneofs()
        .map(|o| (o.name().to_owned(), o.is_synthetic()))
        .collect();
    assert_eq!(
        oneofs,
        [
            ("choice".to_owned(), false),
            ("_explicit_int".to_owned(), true),
            ("_required_int".to_owned(), true),
            ("_explicit_str".to_owned(), true),
            ("_explicit_default".to_owned(), true),
        ]
    );

    // Nested messages inherit through their parents from the file.
    let nested = message(&pool, &format!("{V1}.Presence.Nested"));
    assert_fields(
        &nested,
        &[
            ("seq", false, false, false, ""),
            ("flag", false, false, false, ""),
            ("deeper", true, false, false, ""),
        ],
    );
    let deeper = message(&pool, &format!("{V1}.Presence.Nested.Deeper"));
    assert_fields(&deeper, &[("delta", true, false, false, "_delta")]);

    let service = pool
        .get_service_by_name(&format!("{V1}.Watcher"))
        .expect("service");
    let watch = service
        .methods()
        .find(|m| m.name() == "Watch")
        .expect("Watch");
    assert!(watch.is_server_streaming() && !watch.is_client_streaming());
    assert_eq!(watch.input().full_name(), format!("{V1}.WatchRequest"));
    assert_eq!(watch.output().full_name(), format!("{V1}.Presence"));
    let get_method = service.methods().find(|m| m.name() == "Get").expect("Get");
    assert!(!get_method.is_server_streaming());

    let color = pool
        .get_enum_by_name(&format!("{V1}.Color"))
        .expect("Color");
    assert_eq!(
        color
            .values()
            .map(|v| v.name().to_owned())
            .collect::<Vec<_>>(),
        ["COLOR_UNSPECIFIED", "COLOR_RED"]
    );
}

#[test]
fn explicit_file_lowers_to_proto2_with_groups_and_expanded_fields() {
    let pool = load(&compile(&["explicit.proto"]));
    let file = pool
        .get_file_by_name("explicit.proto")
        .expect("explicit.proto");
    assert_eq!(file.syntax(), Syntax::Proto2);
    let m = message(&pool, &format!("{V1}.Event"));
    assert_fields(
        &m,
        &[
            ("seq", true, false, false, ""),
            ("level", true, false, false, ""),
            ("codes", false, false, false, ""),
            ("packed_codes", false, false, true, ""),
            ("payload", true, true, false, ""),
            ("framed", true, false, false, ""),
            ("by_key", false, false, false, ""),
            ("kind", true, false, false, ""),
            ("note", true, false, false, ""),
            ("levels", false, false, true, ""),
        ],
    );
    assert!(field(&m, "note").is_required());
    assert_eq!(m.oneofs().count(), 0);
    // A closed enum's default is its first value, which need not be 0.
    assert_eq!(field(&m, "level").default_value(), Value::EnumNumber(1));
    // The map stays length-prefixed under the file's DELIMITED, its value too.
    let by_key = field(&m, "by_key");
    assert!(by_key.is_map());
    let Kind::Message(entry) = by_key.kind() else {
        panic!("map entry");
    };
    assert!(!field(&entry, "value").is_group());
    assert_eq!(
        pool.get_enum_by_name(&format!("{V1}.Event.Kind"))
            .expect("Kind")
            .values()
            .count(),
        2
    );
    let stream = pool
        .get_service_by_name(&format!("{V1}.EventService"))
        .expect("service")
        .methods()
        .next()
        .expect("Stream");
    assert!(stream.is_server_streaming());
    assert_eq!(stream.output().full_name(), format!("{V1}.Event"));
}

#[test]
fn edition_2024_is_lowered_like_2023() {
    let pool = load(&compile(&["feed2024.proto"]));
    let cursor = message(&pool, "reprise.editions.v2.Cursor");
    assert_eq!(cursor.parent_file().syntax(), Syntax::Proto3);
    assert_fields(
        &cursor,
        &[
            ("seq", false, false, false, ""),
            ("topic", true, false, false, "_topic"),
            ("at", true, false, false, ""),
            ("hidden", true, true, false, ""),
        ],
    );
    let tail = pool
        .get_service_by_name("reprise.editions.v2.Feed")
        .expect("Feed")
        .methods()
        .next()
        .expect("Tail");
    assert!(tail.is_server_streaming());
}

#[test]
fn synthetic_oneof_names_avoid_every_name_in_scope() {
    let file = editions_file(
        "x.proto",
        1000,
        &[len(
            num::FILE_MESSAGE_TYPE,
            &[
                text(num::MESSAGE_NAME, "M"),
                len(num::MESSAGE_FIELD, &scalar("a", 1, &[])),
                len(
                    num::MESSAGE_FIELD,
                    &scalar("b", 2, &presence_option(num::FEATURES_FIELD, 2)),
                ),
                len(num::MESSAGE_NESTED_TYPE, &text(num::MESSAGE_NAME, "_a")),
                len(num::MESSAGE_ONEOF_DECL, &text(num::ONEOF_NAME, "X_a")),
            ]
            .concat(),
        )],
    );
    let pool = load(&set_of(&[file]));
    let a = field(&message(&pool, "hand.M"), "a");
    let oneof = a.containing_oneof().expect("synthetic oneof");
    assert_eq!(oneof.name(), "XX_a");
    assert!(oneof.is_synthetic());
}
