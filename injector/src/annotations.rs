//! The annotations a pod template (or its namespace, for [`INJECT`]) sets, and the ones the
//! injector writes. Names and values are a contract: users' manifests and external tests use them.

/// `enabled` / `disabled`: add the sidecar. The pod's value wins over its namespace's.
pub const INJECT: &str = "reprise.dev/inject";
/// ConfigMap holding `sidecar.yaml`, mounted read-only at `/etc/reprise`.
/// Default: `<service>-reprise` when the service is known, else [`crate::Settings::config_map`].
pub const CONFIG: &str = "reprise.dev/config";
/// The sidecar's `upstream` (`REPRISE_UPSTREAM`), overriding the config's.
pub const UPSTREAM: &str = "reprise.dev/upstream";
/// Comma-separated env names pointed at the sidecar in every app container.
pub const TARGET_ENV: &str = "reprise.dev/target-env";
/// `REPRISE_SERVICE`; default the label `app.kubernetes.io/name`, else `app`.
pub const SERVICE: &str = "reprise.dev/service";
/// `true` (default): an init container with `restartPolicy: Always`; `false`: a plain container.
pub const NATIVE_SIDECAR: &str = "reprise.dev/native-sidecar";

/// The sidecar's image.
pub const IMAGE: &str = "reprise.dev/image";
/// `Always`, `IfNotPresent` or `Never`.
pub const IMAGE_PULL_POLICY: &str = "reprise.dev/image-pull-policy";
/// The sidecar's resources, as Kubernetes quantities.
pub const CPU_REQUEST: &str = "reprise.dev/cpu-request";
pub const CPU_LIMIT: &str = "reprise.dev/cpu-limit";
pub const MEMORY_REQUEST: &str = "reprise.dev/memory-request";
pub const MEMORY_LIMIT: &str = "reprise.dev/memory-limit";
/// `RUST_LOG` of the sidecar: `error`, `warn`, `info`, `debug` or `trace`.
pub const LOG_LEVEL: &str = "reprise.dev/log-level";
/// The port of the app's gRPC target on loopback (`REPRISE_LISTEN=127.0.0.1:PORT`).
pub const PROXY_PORT: &str = "reprise.dev/proxy-port";
/// The port of `/metrics`, `/healthz`, `/readyz` (`REPRISE_METRICS_LISTEN=0.0.0.0:PORT`).
pub const ADMIN_PORT: &str = "reprise.dev/admin-port";
/// The sidecar's `shutdown_timeout` (`REPRISE_SHUTDOWN_TIMEOUT`); also sizes the grace period.
pub const SHUTDOWN_TIMEOUT: &str = "reprise.dev/shutdown-timeout";
/// The sidecar's `drain_period` (`REPRISE_DRAIN_PERIOD`).
pub const DRAIN_PERIOD: &str = "reprise.dev/drain-period";
/// A Secret in the pod's namespace whose key `url` becomes `REPRISE_AMQP_URL`.
pub const AMQP_SECRET: &str = "reprise.dev/amqp-secret";

/// Written by the injector: `"OLD -> NEW"` when `terminationGracePeriodSeconds` was raised to
/// cover the sidecar's shutdown.
pub const TERMINATION_GRACE_RAISED: &str = "reprise.dev/termination-grace-raised";
/// Written by the injector: the recoverer's selector, and what makes injection idempotent.
pub const INJECTED_LABEL: &str = "reprise.dev/injected";

pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";

/// Every annotation the injector reads from a pod, for documentation and checks.
pub const READ: &[&str] = &[
    INJECT,
    CONFIG,
    UPSTREAM,
    TARGET_ENV,
    SERVICE,
    NATIVE_SIDECAR,
    IMAGE,
    IMAGE_PULL_POLICY,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    LOG_LEVEL,
    PROXY_PORT,
    ADMIN_PORT,
    SHUTDOWN_TIMEOUT,
    DRAIN_PERIOD,
    AMQP_SECRET,
];
