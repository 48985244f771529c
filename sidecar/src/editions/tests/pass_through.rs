use super::*;

#[test]
fn proto2_and_proto3_sets_pass_through_byte_identical() {
    for set in [
        compile(&["common.proto"]),
        compile(&[
            "google/protobuf/descriptor.proto",
            "google/protobuf/timestamp.proto",
        ]),
        reprise_proto::DEMO_DESCRIPTOR_SET.to_vec(),
    ] {
        let out = lower_set(&set).expect("passes through");
        assert!(matches!(out, Cow::Borrowed(b) if std::ptr::eq(b, set.as_slice())));
    }
    for file in raw_files(&compile(&["presence.proto"])) {
        let lowered = lower_file(&file).expect("lowers");
        let editions = FileDescriptorProto::decode(file.as_slice())
            .expect("file")
            .syntax()
            == "editions";
        assert_eq!(matches!(lowered, Cow::Owned(_)), editions);
    }
}

#[test]
fn only_editions_files_change_and_the_result_passes_through() {
    let set = compile(&["presence.proto", "feed2024.proto"]);
    let lowered = lower_set(&set).expect("lowers").into_owned();
    let before = FileDescriptorSet::decode(set.as_slice()).expect("set");
    let after = FileDescriptorSet::decode(lowered.as_slice()).expect("lowered set");
    let names = |s: &FileDescriptorSet| {
        s.file
            .iter()
            .map(|f| f.name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&before), names(&after));
    let common = |s: &FileDescriptorSet| {
        s.file
            .iter()
            .find(|f| f.name() == "common.proto")
            .expect("common.proto")
            .clone()
    };
    assert_eq!(common(&before), common(&after));
    // Lowering is idempotent: its output has no editions file left.
    assert!(matches!(lower_set(&lowered), Ok(Cow::Borrowed(_))));
}

/// Reflection hands out files one by one; lowering each raw file, then decoding and adding
/// them as descriptors.rs does, gives the same view as the lowered set.
#[test]
fn files_from_reflection_lower_one_by_one() {
    let files = raw_files(&compile(&["presence.proto"]))
        .iter()
        .map(|raw| {
            let lowered = lower_file(raw).expect("lowers");
            FileDescriptorProto::decode(lowered.as_ref()).expect("decodes")
        })
        .collect::<Vec<_>>();
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files).expect("resolves");
    assert_fields(
        &message(&pool, &format!("{V1}.Presence")),
        &[
            ("implicit_int", false, false, false, ""),
            ("explicit_int", true, false, false, "_explicit_int"),
            ("nested", true, true, false, ""),
        ],
    );
}

/// Every .proto that ships with protoc, some of them edition 2023/2024 files with custom
/// feature extensions: real-world input for the lowering.
#[test]
fn protoc_bundled_files_lower_and_load() {
    let include = protoc_bin_vendored::include_path().expect("includes");
    let mut files = Vec::new();
    let mut dirs = vec![include.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read include dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                let relative = path.strip_prefix(&include).expect("under include");
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let set = compile(&names);
    let editions = FileDescriptorSet::decode(set.as_slice())
        .expect("set")
        .file
        .iter()
        .filter(|f| f.syntax() == "editions")
        .count();
    assert!(editions > 0, "protoc ships editions files");
    let pool = load(&set);
    assert_eq!(pool.files().count(), files.len());
}
