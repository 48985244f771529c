//! Compiles the .proto sources with a vendored `protoc`, so a fresh clone needs nothing
//! installed, and writes one FileDescriptorSet per package for `descriptors:` and reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Prefer a protoc the user pinned; otherwise the vendored one.
    if env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // `set_var` is unsafe in edition 2024; pass the path explicitly instead.
        return compile(Some(protoc));
    }
    compile(None)
}

fn compile(protoc: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if let Some(protoc) = protoc {
        config.protoc_executable(protoc);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("demo_descriptor.binpb"))
        .compile_with_config(config, &["demo/v1/demo.proto"], &["."])?;
    println!("cargo:rerun-if-changed=demo");
    Ok(())
}
