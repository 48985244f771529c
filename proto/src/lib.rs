//! Compiled protobuf packages shared by the sidecar, the demo apps and the tests.

/// The demo's `demo.v1` package: `UserService`, `EventService` and `LedgerService`.
pub mod demo {
    pub mod v1 {
        tonic::include_proto!("demo.v1");
    }
}

/// The conference talk's own interface, package `pb`: `Server/GetData`, streaming `Data` by an
/// int32 `Value` that counts from 0, resumed "from, inclusive" through `DataRequest.Offset`.
pub mod pb {
    tonic::include_proto!("pb");
}

/// Reprise's own `reprise.v1` package: the `ResumeSink` callback apps implement.
pub mod reprise {
    pub mod v1 {
        tonic::include_proto!("reprise.v1");
    }
}

/// FileDescriptorSet (with imports) of `demo.v1` and `pb`, as `protoc --include_imports
/// --descriptor_set_out` writes it. The demo server serves it over gRPC reflection and
/// `demo-server --write-descriptors FILE` writes it to disk for the sidecar's `descriptors:` key.
pub const DEMO_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/demo_descriptor.binpb"));

/// FileDescriptorSet of `reprise.v1`.
pub const REPRISE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reprise_descriptor.binpb"));
