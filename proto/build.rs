//! Compiles the .proto sources with a vendored `protoc`, so a fresh clone needs nothing
//! installed, and writes one FileDescriptorSet per API for `descriptors:` and reflection: the
//! demo's (`demo.v1` and the talk's `pb`) and Reprise's own (`reprise.v1`).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Prefer a protoc the user pinned (PROTOC); otherwise the vendored one. The path is passed
    // explicitly because `set_var` is unsafe in edition 2024.
    let protoc = match env::var_os("PROTOC") {
        Some(_) => None,
        None => Some(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let sets: [(&[&str], &str); 2] = [
        (
            &["demo/v1/demo.proto", "demo/v1/ledger.proto", "pb/pb.proto"],
            "demo_descriptor.binpb",
        ),
        (&["reprise/v1/sink.proto"], "reprise_descriptor.binpb"),
    ];
    for (protos, set) in sets {
        let mut config = tonic_prost_build::Config::new();
        if let Some(protoc) = &protoc {
            config.protoc_executable(protoc);
        }
        tonic_prost_build::configure()
            .file_descriptor_set_path(out.join(set))
            .compile_with_config(config, protos, &["."])?;
    }
    println!("cargo:rerun-if-changed=demo");
    println!("cargo:rerun-if-changed=pb");
    println!("cargo:rerun-if-changed=reprise");
    Ok(())
}
