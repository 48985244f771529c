use super::*;

#[test]
fn implicit_zero_is_absent_and_explicit_zero_is_written() {
    let pool = load(&compile(&["presence.proto"]));
    let m = message(&pool, &format!("{V1}.Presence"));

    // As prost's generated code writes it: explicit_int = 0 (field 2) is on the wire,
    // implicit_int = 0 (field 1) is not; required_int (field 3) = 5.
    let wire = [0x10, 0x00, 0x18, 0x05];
    let decoded = DynamicMessage::decode(m.clone(), wire.as_slice()).expect("decodes");
    assert!(!has(&decoded, "implicit_int"));
    assert_eq!(get(&decoded, "implicit_int"), Value::I32(0));
    assert!(has(&decoded, "explicit_int"));
    assert_eq!(get(&decoded, "explicit_int"), Value::I32(0));
    assert_eq!(get(&decoded, "required_int"), Value::I32(5));
    assert!(!has(&decoded, "explicit_str"));
    assert_eq!(decoded.encode_to_vec(), wire);

    let mut built = DynamicMessage::new(m);
    built.set_field_by_name("implicit_int", Value::I32(0));
    built.set_field_by_name("explicit_int", Value::I32(0));
    assert!(!has(&built, "implicit_int"));
    assert!(has(&built, "explicit_int"));
    assert_eq!(built.encode_to_vec(), [0x10, 0x00]);
}

#[test]
fn lowered_presence_file_reads_and_writes_what_protobuf_does() {
    let pool = load(&compile(&["presence.proto"]));
    let m = message(&pool, &format!("{V1}.Presence"));
    let reference = protoc_encode(
        "presence.proto",
        &format!("{V1}.Presence"),
        r#"
        implicit_int: 0
        explicit_int: 0
        required_int: 42
        implicit_str: ""
        explicit_str: ""
        stamp { seconds: 5 zone: "UTC" }
        packed: [1, 2, 300]
        expanded: [4, 5]
        names: ["a", "b"]
        choice_nested { seq: 9 }
        color: COLOR_RED
        counts { key: "k" value: 3 }
        nested { seq: 1 flag: true deeper { delta: -3 } }
        nested_list { seq: 2 }
        nested_list { seq: 0 flag: false }
        explicit_default: 0
        "#,
    );
    // Written by protobuf itself: implicit zeros are absent, explicit ones present, the
    // delimited fields are groups (start-group keys of fields 12, 15 and 16) and field 7 is
    // packed while field 8 is not.
    assert_eq!(&reference[..4], &[0x10, 0x00, 0x18, 42]);
    for key in [
        (12 << 3) | 3,
        (15 << 3) | 3,
        (16 << 3) | 3,
        (7 << 3) | 2,
        8 << 3,
    ] {
        assert!(reference.contains(&key), "key {key:#x} in {reference:x?}");
    }

    let decoded = DynamicMessage::decode(m, reference.as_slice()).expect("decodes");
    assert_eq!(
        decoded.encode_to_vec(),
        reference,
        "prost-reflect re-encodes the same bytes"
    );
    assert!(!has(&decoded, "implicit_int") && has(&decoded, "explicit_int"));
    assert!(!has(&decoded, "implicit_str") && has(&decoded, "explicit_str"));
    assert!(has(&decoded, "explicit_default"));
    assert_eq!(get(&decoded, "required_int"), Value::I32(42));
    assert_eq!(
        get(&decoded, "packed"),
        Value::List(vec![Value::I32(1), Value::I32(2), Value::I32(300)])
    );
    assert_eq!(
        get(&decoded, "expanded"),
        Value::List(vec![Value::I32(4), Value::I32(5)])
    );
    assert_eq!(get(&decoded, "color"), Value::EnumNumber(1));
    let choice = get(&decoded, "choice_nested");
    let choice = choice.as_message().expect("message");
    assert_eq!(get(choice, "seq"), Value::I64(9));
    let nested = get(&decoded, "nested");
    let nested = nested.as_message().expect("message");
    assert_eq!(get(nested, "flag"), Value::Bool(true));
    let deeper = get(nested, "deeper");
    assert_eq!(
        get(deeper.as_message().expect("message"), "delta"),
        Value::I64(-3)
    );
    let Value::List(list) = get(&decoded, "nested_list") else {
        panic!("list");
    };
    assert_eq!(list.len(), 2);
    let stamp = get(&decoded, "stamp");
    assert_eq!(
        get(stamp.as_message().expect("message"), "zone"),
        Value::String("UTC".into())
    );
}

#[test]
fn lowered_explicit_file_reads_and_writes_what_protobuf_does() {
    let pool = load(&compile(&["explicit.proto"]));
    let m = message(&pool, &format!("{V1}.Event"));
    let reference = protoc_encode(
        "explicit.proto",
        &format!("{V1}.Event"),
        r#"
        seq: 0
        level: LEVEL_HIGH
        codes: [1, 2]
        packed_codes: [3, 4]
        payload { body: "grouped" }
        framed { body: "prefixed" }
        by_key { key: "k" value { body: "v" } }
        kind: KIND_UNSPECIFIED
        note: ""
        levels: [LEVEL_LOW, LEVEL_HIGH]
        "#,
    );
    assert!(reference.contains(&((5 << 3) | 3)), "payload is a group");
    let decoded = DynamicMessage::decode(m, reference.as_slice()).expect("decodes");
    assert_eq!(decoded.encode_to_vec(), reference);
    assert!(has(&decoded, "seq") && has(&decoded, "kind") && has(&decoded, "note"));
    assert_eq!(get(&decoded, "level"), Value::EnumNumber(2));
    let payload = get(&decoded, "payload");
    assert_eq!(
        get(payload.as_message().expect("message"), "body"),
        Value::String("grouped".into())
    );
    let Value::Map(by_key) = get(&decoded, "by_key") else {
        panic!("map");
    };
    assert_eq!(by_key.len(), 1);
}

/// The two features prost-reflect cannot express behave as the module documentation says.
#[test]
fn closed_enums_read_open_and_utf8_is_always_validated() {
    let pool = load(&compile(&["explicit.proto"]));
    // Level is CLOSED: protobuf would move the unknown 7 to unknown fields; prost-reflect
    // keeps it in the field. The bytes forwarded are the same.
    let m = message(&pool, &format!("{V1}.Event"));
    let wire = [0x10, 0x07];
    let decoded = DynamicMessage::decode(m, wire.as_slice()).expect("decodes");
    assert_eq!(get(&decoded, "level"), Value::EnumNumber(7));
    assert_eq!(decoded.encode_to_vec(), wire);

    let pool = load(&compile_source(
        r#"
        edition = "2023";
        package x;
        message M { string s = 1 [features.utf8_validation = NONE]; }
        "#,
    ));
    let invalid = [0x0a, 0x01, 0xff];
    assert!(DynamicMessage::decode(message(&pool, "x.M"), invalid.as_slice()).is_err());
}
