use super::*;

/// Why this module exists, and why lowering must come before any prost-reflect call:
/// 0.16.5 does not even refuse an editions file cleanly, it panics while building its
/// `unknown syntax` error (an index out of bounds in descriptor/error.rs), through
/// `DescriptorPool::decode` and `add_file_descriptor_protos` alike.
#[test]
fn prost_reflect_cannot_load_editions_without_lowering() {
    let set = compile(&["presence.proto"]);
    let loaded = std::panic::catch_unwind(|| DescriptorPool::decode(set.as_slice()));
    assert!(!matches!(loaded, Ok(Ok(_))), "refused or panicked");
    assert!(DescriptorPool::decode(lower_set(&set).expect("lowers").as_ref()).is_ok());
}

/// What prost-reflect checks in proto3 files, found by trying: it accepts groups and
/// required fields there (neither is valid proto3 for protoc) but refuses enums whose first
/// value is not 0. The proto3 lowering relies on the first and works around the second.
#[test]
fn prost_reflect_proto3_checks() {
    let file = |first_enum_value: i32| FileDescriptorProto {
        name: Some("probe.proto".into()),
        package: Some("probe".into()),
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("M".into()),
            field: vec![
                FieldDescriptorProto {
                    name: Some("g".into()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::Group as i32),
                    type_name: Some(".probe.M".into()),
                    ..Default::default()
                },
                FieldDescriptorProto {
                    name: Some("r".into()),
                    number: Some(2),
                    label: Some(Label::Required as i32),
                    r#type: Some(Type::Int32 as i32),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        enum_type: vec![EnumDescriptorProto {
            name: Some("E".into()),
            value: vec![EnumValueDescriptorProto {
                name: Some("E_ONE".into()),
                number: Some(first_enum_value),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let decode = |file| {
        DescriptorPool::decode(
            FileDescriptorSet { file: vec![file] }
                .encode_to_vec()
                .as_slice(),
        )
    };
    let pool = decode(file(0)).expect("groups and required load in proto3");
    let m = message(&pool, "probe.M");
    assert!(field(&m, "g").is_group());
    assert!(field(&m, "r").is_required());
    assert!(!field(&m, "r").supports_presence());
    assert!(decode(file(1)).is_err(), "proto3 enums must start at 0");
}
