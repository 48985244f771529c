# syntax=docker/dockerfile:1
# One image with every Reprise binary: reprise-sidecar, reprise-recoverer, reprise-injector, the reprise CLI and
# the demo apps (demo-server, demo-client, demo-sink). The manifests in k8s/ pick the binary
# with `command:`. Build from the repository root:
#
#   docker build -t reprise:latest .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# protoc is vendored by the build (protoc-bin-vendored): nothing to apt-get. The cache mounts
# (BuildKit) keep downloaded crates and compiled dependencies between builds, so a source change
# rebuilds only the workspace's own crates. target/ lives in the cache, so the binaries are
# copied out in the same step. `dist` is release with fat LTO (Cargo.toml): a smaller, faster
# sidecar for a longer build. The sidecar is built on its own first: built together with the
# recoverer, its dependencies would get the features the recoverer's need too (Cargo unifies
# features per build), and its code would be larger, which is resident memory in every pod.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p reprise-sidecar \
 && mkdir -p /out \
 && cp target/dist/reprise-sidecar /out/ \
 && cargo build --profile dist --locked -p reprise-recoverer -p reprise-injector -p reprise-cli -p reprise-demo \
 && cd target/dist \
 && cp reprise-recoverer reprise-injector reprise demo-server demo-client demo-sink /out/

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="reprise" \
      org.opencontainers.image.description="Reprise: resumable gRPC server streams (sidecar, recoverer, CLI, demo apps)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 reprise \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin reprise
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so that the kubelet can enforce runAsNonRoot without looking the name up.
USER 65532:65532
# 15001: the sidecar's listener, 15090: its metrics and probes, 9090: the recoverer's.
EXPOSE 15001 15090 9090
CMD ["reprise-sidecar", "--config", "/etc/reprise/sidecar.yaml"]
