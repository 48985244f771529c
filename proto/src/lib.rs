//! Compiled protobuf packages shared by the sidecar, the demo apps and the tests.

/// The demo's `demo.v1` package: `UserService` and `EventService`.
pub mod demo {
    pub mod v1 {
        tonic::include_proto!("demo.v1");
    }
}

/// FileDescriptorSet (with imports) of `demo.v1`, as `protoc --include_imports
/// --descriptor_set_out` writes it. The demo server serves it over gRPC reflection and
/// `reprise-demo descriptors` writes it to disk for the sidecar's `descriptors:` key.
pub const DEMO_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/demo_descriptor.binpb"));
