//! The schemas the differential checks run on, built as descriptors in code: every leaf kind
//! the sidecar reads, each with implicit presence, explicit presence (proto3 `optional`,
//! proto2 `optional`) and as a oneof member; reached flat, through nested and merged messages,
//! through oneof members and through a proto2 group; with noise fields of other types beside.

use prost_reflect::{
    DescriptorPool, FieldDescriptor, MessageDescriptor,
    prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        OneofDescriptorProto,
        field_descriptor_proto::{Label, Type},
    },
};

use crate::{descriptors, offset::OffsetPath};

/// The leaf kinds an offset or resume field may have, with the names used in the schema.
pub const LEAF_TYPES: [(Type, &str); 12] = [
    (Type::Int32, "int32"),
    (Type::Int64, "int64"),
    (Type::Uint32, "uint32"),
    (Type::Uint64, "uint64"),
    (Type::Sint32, "sint32"),
    (Type::Sint64, "sint64"),
    (Type::Fixed32, "fixed32"),
    (Type::Fixed64, "fixed64"),
    (Type::Sfixed32, "sfixed32"),
    (Type::Sfixed64, "sfixed64"),
    (Type::String, "string"),
    (Type::Bytes, "bytes"),
];

/// Every path the checks compare, resolved once: the message it starts at and its fields.
pub struct Schema {
    pub pool: DescriptorPool,
    pub paths: Vec<SchemaPath>,
    /// Each path as the sidecar resolves it at start-up, in the same order.
    pub wire_paths: Vec<OffsetPath>,
}

pub struct SchemaPath {
    pub root: MessageDescriptor,
    /// `Root.key.opt_int32`, for failure reports.
    pub name: String,
    pub fields: Vec<FieldDescriptor>,
}

impl Schema {
    pub fn new() -> Schema {
        let set = FileDescriptorSet {
            file: vec![proto3(), proto2()],
        };
        let pool = match DescriptorPool::from_file_descriptor_set(set) {
            Ok(pool) => pool,
            // The schema is fixed code: a failure here is a bug in this file.
            Err(e) => panic!("conformance schema does not resolve: {e}"),
        };
        let mut paths = Vec::new();
        let leaves3: Vec<String> = ["implicit", "opt", "one"]
            .iter()
            .flat_map(|p| LEAF_TYPES.iter().map(move |(_, t)| format!("{p}_{t}")))
            .collect();
        let leaves2: Vec<String> = LEAF_TYPES
            .iter()
            .map(|(_, t)| format!("opt_{t}"))
            .chain(["one_int64", "one_string", "req"].map(String::from))
            .collect();
        let plans: [(&str, &[&str], &[String]); 4] = [
            ("conformance.v3.Leaf", &[""], &leaves3),
            (
                "conformance.v3.Root",
                &["key.", "mid.key.", "mid.left.", "a.", "b.right."],
                &leaves3,
            ),
            ("conformance.v2.Leaf2", &[""], &leaves2),
            (
                "conformance.v2.Root2",
                &["key.", "grp.inner.", "next.grp.inner.", "next.key."],
                &leaves2,
            ),
        ];
        for (root, prefixes, leaves) in plans {
            let Some(root) = pool.get_message_by_name(root) else {
                panic!("conformance schema has no {root}");
            };
            for prefix in prefixes {
                for leaf in leaves {
                    push(&mut paths, &root, &format!("{prefix}{leaf}"));
                }
            }
        }
        let root2 = pool.get_message_by_name("conformance.v2.Root2");
        if let Some(root2) = root2 {
            for path in ["grp.seq", "grp.tag", "next.grp.seq"] {
                push(&mut paths, &root2, path);
            }
        }
        let wire_paths = paths
            .iter()
            .map(|p| match descriptors::offset_path(&p.fields) {
                Some(wire) => wire,
                None => panic!(
                    "conformance path {} has no integer, string or bytes leaf",
                    p.name
                ),
            })
            .collect();
        Schema {
            pool,
            paths,
            wire_paths,
        }
    }

    /// The messages generated inputs start at.
    pub fn roots(&self) -> Vec<MessageDescriptor> {
        let mut roots: Vec<MessageDescriptor> = Vec::new();
        for p in &self.paths {
            if !roots.contains(&p.root) {
                roots.push(p.root.clone());
            }
        }
        roots
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema::new()
    }
}

fn push(paths: &mut Vec<SchemaPath>, root: &MessageDescriptor, path: &str) {
    match descriptors::field_path(root, path, "conformance") {
        Ok(fields) => paths.push(SchemaPath {
            root: root.clone(),
            name: format!("{}.{path}", root.name()),
            fields,
        }),
        Err(e) => panic!("conformance path {path}: {e}"),
    }
}

fn field(name: &str, number: i32, ty: Type, label: Label) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(label as i32),
        r#type: Some(ty as i32),
        json_name: Some(name.into()),
        ..Default::default()
    }
}

fn message_field(name: &str, number: i32, type_name: &str, label: Label) -> FieldDescriptorProto {
    FieldDescriptorProto {
        type_name: Some(type_name.into()),
        ..field(name, number, Type::Message, label)
    }
}

fn oneof(name: &str) -> OneofDescriptorProto {
    OneofDescriptorProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn in_oneof(mut f: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
    f.oneof_index = Some(index);
    f
}

/// proto3: `Leaf` has each kind implicit (1–12), `optional` (21–32) and in a oneof (41–52).
fn proto3() -> FileDescriptorProto {
    let mut leaf = DescriptorProto {
        name: Some("Leaf".into()),
        oneof_decl: vec![oneof("choice")],
        ..Default::default()
    };
    for (i, (ty, name)) in (0i32..).zip(LEAF_TYPES) {
        leaf.field.push(field(
            &format!("implicit_{name}"),
            1 + i,
            ty,
            Label::Optional,
        ));
    }
    for (i, (ty, name)) in (0i32..).zip(LEAF_TYPES) {
        leaf.field.push(in_oneof(
            field(&format!("one_{name}"), 41 + i, ty, Label::Optional),
            0,
        ));
    }
    // Synthetic oneofs come after the real ones, as protoc writes them.
    for (i, (ty, name)) in (0i32..).zip(LEAF_TYPES) {
        let index = leaf.oneof_decl.len() as i32;
        leaf.oneof_decl.push(oneof(&format!("_opt_{name}")));
        let mut f = in_oneof(
            field(&format!("opt_{name}"), 21 + i, ty, Label::Optional),
            index,
        );
        f.proto3_optional = Some(true);
        leaf.field.push(f);
    }
    leaf.field.extend([
        field("noise_double", 60, Type::Double, Label::Optional),
        field("noise_bool", 61, Type::Bool, Label::Optional),
        field("noise_list", 62, Type::Int64, Label::Repeated),
        message_field("noise_child", 63, ".conformance.v3.Leaf", Label::Optional),
        field("noise_text", 64, Type::String, Label::Optional),
        field("noise_float", 65, Type::Float, Label::Optional),
    ]);
    let leaf_ref = ".conformance.v3.Leaf";
    let mid = DescriptorProto {
        name: Some("Mid".into()),
        field: vec![
            message_field("key", 1, leaf_ref, Label::Optional),
            message_field("other", 2, leaf_ref, Label::Optional),
            in_oneof(message_field("left", 3, leaf_ref, Label::Optional), 0),
            in_oneof(message_field("right", 4, leaf_ref, Label::Optional), 0),
            field("pad", 5, Type::Int64, Label::Optional),
        ],
        oneof_decl: vec![oneof("side")],
        ..Default::default()
    };
    let root = DescriptorProto {
        name: Some("Root".into()),
        field: vec![
            message_field("key", 1, leaf_ref, Label::Optional),
            message_field("mid", 2, ".conformance.v3.Mid", Label::Optional),
            in_oneof(message_field("a", 3, leaf_ref, Label::Optional), 0),
            in_oneof(
                message_field("b", 4, ".conformance.v3.Mid", Label::Optional),
                0,
            ),
            in_oneof(field("c", 5, Type::String, Label::Optional), 0),
            message_field("list", 6, leaf_ref, Label::Repeated),
        ],
        oneof_decl: vec![oneof("pick")],
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("conformance/v3.proto".into()),
        package: Some("conformance.v3".into()),
        message_type: vec![leaf, mid, root],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// proto2: `Leaf2` has each kind `optional` (1–12), a `required` field and a oneof; `Root2`
/// reaches it through a group, a message and itself.
fn proto2() -> FileDescriptorProto {
    let mut leaf = DescriptorProto {
        name: Some("Leaf2".into()),
        oneof_decl: vec![oneof("choice")],
        ..Default::default()
    };
    for (i, (ty, name)) in (0i32..).zip(LEAF_TYPES) {
        leaf.field
            .push(field(&format!("opt_{name}"), 1 + i, ty, Label::Optional));
    }
    leaf.field.extend([
        field("req", 20, Type::Int64, Label::Required),
        field("noise", 30, Type::Double, Label::Optional),
        in_oneof(field("one_int64", 41, Type::Int64, Label::Optional), 0),
        in_oneof(field("one_string", 42, Type::String, Label::Optional), 0),
    ]);
    let leaf_ref = ".conformance.v2.Leaf2";
    // A group: the nested message is named after the field, capitalised, as protoc requires.
    let grp = DescriptorProto {
        name: Some("Grp".into()),
        field: vec![
            field("seq", 1, Type::Int64, Label::Optional),
            message_field("inner", 2, leaf_ref, Label::Optional),
            field("tag", 3, Type::String, Label::Optional),
        ],
        ..Default::default()
    };
    let mut grp_field = message_field("grp", 1, ".conformance.v2.Root2.Grp", Label::Optional);
    grp_field.r#type = Some(Type::Group as i32);
    let root = DescriptorProto {
        name: Some("Root2".into()),
        field: vec![
            grp_field,
            message_field("key", 2, leaf_ref, Label::Optional),
            message_field("next", 3, ".conformance.v2.Root2", Label::Optional),
        ],
        nested_type: vec![grp],
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("conformance/v2.proto".into()),
        package: Some("conformance.v2".into()),
        message_type: vec![leaf, root],
        syntax: Some("proto2".into()),
        ..Default::default()
    }
}
