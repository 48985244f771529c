//! The sidecar's configuration: YAML file, `REPRISE_<KEY>` environment overrides, defaults.
//!
//! Parsing is done by hand over a YAML value (not `serde(deny_unknown_fields)`) so that every bad
//! key or value is reported at once, each naming the key and what would have been valid.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use reprise_jobs::config_file;
use serde_yaml::Value;

/// Every top-level key, in the order the docs list them.
pub const KEYS: &[&str] = &[
    "listen",
    "upstream",
    "descriptors",
    "redis_url",
    "amqp_url",
    "resume_sink",
    "key_prefix",
    "service",
    "pod_name",
    "pod_namespace",
    "pod_uid",
    "metrics_listen",
    "checkpoint_interval",
    "lease_ttl",
    "shutdown_timeout",
    "drain_period",
    "handoff_read_wait",
    "max_outage",
    "reconnect_backoff",
    "reconnect_backoff_max",
    "max_message_bytes",
    "max_metadata_bytes",
    "max_app_connections",
    "preface_timeout",
    "worker_threads",
    "upstream_connections",
    "log_format",
    "streams",
];

/// `max_metadata_bytes`: 1 MiB by default, 64 times hyper's 16 KiB and 128 times the 8 KiB
/// that grpc-java and gRPC core accept by default; at most 16 MiB, grpc-go's default and the
/// most any gRPC library accepts without being told to; at least 16 KiB.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 1024 * 1024;
pub const MIN_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;
/// The most upstream connections a sidecar may keep (`upstream_connections`).
pub const MAX_UPSTREAM_CONNECTIONS: usize = 64;

const STREAM_KEYS: &[&str] = &[
    "method",
    "offset_field",
    "resume_field",
    "resume_inclusive",
    "resume",
    "on_app_cancel",
    "retry_codes",
    "max_outage",
];

/// gRPC status codes a stream may be configured to resume on (`retry_codes`).
pub const RETRYABLE_CODE_NAMES: &[&str] = &[
    "cancelled",
    "unknown",
    "deadline_exceeded",
    "resource_exhausted",
    "aborted",
    "internal",
    "unavailable",
    "data_loss",
];

/// The sidecar's configuration, every key validated ([`Config::parse`]); see the README's
/// Configuration table for each key's meaning and default.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: http::Uri,
    pub descriptors: DescriptorSource,
    pub redis_url: Option<String>,
    pub amqp_url: Option<String>,
    /// The app's `reprise.v1.ResumeSink` (deliver mode), e.g. http://127.0.0.1:15002.
    pub resume_sink: Option<http::Uri>,
    pub key_prefix: String,
    pub service: String,
    pub pod_name: String,
    /// Recorded as the job's `owner_namespace`; empty when unknown.
    pub pod_namespace: String,
    /// Recorded as the job's `owner_uid`; empty when unknown.
    pub pod_uid: String,
    pub metrics_listen: SocketAddr,
    pub checkpoint_interval: Duration,
    pub lease_ttl: Duration,
    pub shutdown_timeout: Duration,
    /// Shutdown step 1: how long streams about to end may finish before they are interrupted.
    pub drain_period: Duration,
    /// Shutdown step 3: how long a stream waits for the app to read what it was handed before
    /// it writes where the job stands (`0s`: not at all).
    pub handoff_read_wait: Duration,
    pub max_outage: Duration,
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
    pub max_message_bytes: usize,
    /// The largest header block (request or response metadata, HTTP/2's header list size) a
    /// call may carry; a larger one fails that call alone with `RESOURCE_EXHAUSTED`.
    pub max_metadata_bytes: usize,
    /// App connections open at once, at most; one more is closed at once (and counted).
    pub max_app_connections: usize,
    /// A connection (app or admin) that sends nothing for this long after it opens is closed.
    pub preface_timeout: Duration,
    /// 1: everything on one thread (tokio's current-thread runtime); more: a work-stealing
    /// runtime with that many workers.
    pub worker_threads: usize,
    /// HTTP/2 connections to the upstream that calls are spread over (fewest in flight).
    pub upstream_connections: usize,
    pub log_format: LogFormat,
    pub streams: Vec<StreamConfig>,
    /// Problems that do not stop start-up, logged once it has begun (an empty config file).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    File(PathBuf),
    /// Fetch from the upstream's gRPC server-reflection service at start-up.
    Reflection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A stream's `resume`: `on_request` or `deliver` (the job store records it with the job).
pub use reprise_jobs::ResumeMode;

/// What a job becomes when its app ends the call itself: RST_STREAM (CANCEL) while its
/// connection lives, or its own deadline (`grpc-timeout`). A lost connection (the app died) is
/// not the app's choice and always leaves the job `interrupted`, to be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppCancel {
    /// The job ends `failed` ("cancelled by the app"): the next identical request starts from
    /// the beginning, as it would without the sidecar. The default: an app that gave up and
    /// asks again from scratch must not get only the tail and believe it has the whole stream.
    Restart,
    /// The job ends `interrupted`: the next identical request gets only what comes after the
    /// last message handed to the app's connection. For apps that persist what they received
    /// and re-send to continue.
    Resume,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `package.Service/Method`, without the leading slash.
    pub method: String,
    pub offset_field: String,
    pub resume_field: String,
    /// The resume field means "from this offset, inclusive" rather than "strictly after it".
    pub resume_inclusive: bool,
    pub resume: ResumeMode,
    pub on_app_cancel: AppCancel,
    /// gRPC codes (as numbers) that mean "the upstream broke, resume". Transport errors always do.
    pub retry_codes: Vec<i32>,
    pub max_outage: Duration,
}

/// All problems found in a configuration; `Display` prints one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads `path` (if given), applies `REPRISE_<KEY>` overrides from `env`, fills defaults.
    pub fn load(
        path: Option<&std::path::Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigErrors> {
        let text = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    return Err(ConfigErrors(vec![format!(
                        "config file {}: {e}",
                        p.display()
                    )]));
                }
            },
            None => String::new(),
        };
        let mut config = Self::parse(&text, env)?;
        if let Some(p) = path
            && serde_yaml::from_str::<Value>(&text).is_ok_and(|v| v.is_null())
        {
            // Probably a mistake (a ConfigMap key that did not mount, a file not yet written),
            // but a valid one: every key has a default, and without `streams` the sidecar is
            // a plain pass-through proxy.
            config.warnings.push(format!(
                "config file {} is empty: running on defaults (every call passes through; nothing is resumable)",
                p.display()
            ));
        }
        Ok(config)
    }

    /// The configuration in `text` with `REPRISE_<KEY>` of `env` over it (the reader every
    /// binary shares, `reprise_jobs::config_file`), every key validated; the error lists every
    /// problem, each naming its key and the valid choices.
    pub fn parse(text: &str, env: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let config_file::Values {
            values: map,
            mut errors,
        } = config_file::values(text, env, KEYS).map_err(ConfigErrors)?;
        let mut p = Parser {
            map,
            errors: &mut errors,
        };
        let descriptors = p.descriptors();
        let mut config = Config {
            listen: p.addr("listen", "127.0.0.1:15001"),
            upstream: p.upstream(),
            descriptors: descriptors.clone().unwrap_or(DescriptorSource::Reflection),
            redis_url: p.redis_url(),
            amqp_url: p.amqp_url(),
            resume_sink: p
                .opt_url("resume_sink", &["http"])
                .and_then(|u| u.parse::<http::Uri>().ok()),
            key_prefix: p.string("key_prefix", Some("reprise".into())),
            service: p.string("service", Some("default".into())),
            pod_name: p.string("pod_name", env.get("POD_NAME").cloned().or_else(hostname)),
            pod_namespace: p.string("pod_namespace", env.get("POD_NAMESPACE").cloned()),
            pod_uid: p.string("pod_uid", env.get("POD_UID").cloned()),
            metrics_listen: p.addr("metrics_listen", "127.0.0.1:15090"),
            checkpoint_interval: p.duration("checkpoint_interval", "100ms"),
            lease_ttl: p.duration("lease_ttl", "10s"),
            shutdown_timeout: p.duration("shutdown_timeout", "20s"),
            drain_period: p.duration_or_zero("drain_period", "1s"),
            handoff_read_wait: p.duration_or_zero("handoff_read_wait", "10s"),
            max_outage: p.duration("max_outage", "30s"),
            reconnect_backoff: p.duration("reconnect_backoff", "50ms"),
            reconnect_backoff_max: p.duration("reconnect_backoff_max", "2s"),
            // gRPC libraries take at most i32::MAX as their maximum message size.
            max_message_bytes: p.bounded(
                "max_message_bytes",
                4 * 1024 * 1024,
                1,
                i32::MAX as u64,
                "bytes",
            ),
            max_metadata_bytes: p.bounded(
                "max_metadata_bytes",
                DEFAULT_MAX_METADATA_BYTES,
                MIN_METADATA_BYTES as u64,
                MAX_METADATA_BYTES as u64,
                "bytes",
            ),
            max_app_connections: p.count("max_app_connections", 1024, 1 << 20),
            preface_timeout: p.duration("preface_timeout", "10s"),
            // One thread, as linkerd2-proxy defaults to one core: a sidecar shares the pod's
            // CPU with its app, and one thread saves the cross-thread wake-ups of a
            // work-stealing runtime (see docs/benchmarks.md).
            worker_threads: p.positive("worker_threads", 1, "threads"),
            upstream_connections: p.count("upstream_connections", 1, MAX_UPSTREAM_CONNECTIONS),
            log_format: match p.choice("log_format", &["text", "json"], "text").as_str() {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            },
            streams: Vec::new(),
            warnings: Vec::new(),
        };
        config.streams = p.streams(config.max_outage);
        if p.raw("handoff_read_wait").is_none() {
            // The default fits any deadline: at most two thirds of what the drain leaves of it.
            config.handoff_read_wait = config
                .handoff_read_wait
                .min(config.shutdown_timeout.saturating_sub(config.drain_period) * 2 / 3);
        }
        errors.extend(config.relations(descriptors.is_some()));
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(config)
    }

    /// What keys must satisfy together (each key alone is valid).
    fn relations(&self, descriptors_set: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if self.listen == self.metrics_listen {
            errors.push(format!(
                "keys `listen` and `metrics_listen`: both are {}; each needs its own port",
                self.listen
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            errors.push(format!(
                "key `key_prefix`: {:?} must be non-empty without spaces",
                self.key_prefix
            ));
        }
        if self.lease_ttl < self.checkpoint_interval * 2 {
            errors.push(format!(
                "key `lease_ttl`: {} must be at least twice `checkpoint_interval` ({}), or leases lapse between renewals",
                humantime::format_duration(self.lease_ttl),
                humantime::format_duration(self.checkpoint_interval)
            ));
        }
        if self.streams.iter().any(|s| s.resume == ResumeMode::Deliver) {
            if self.resume_sink.is_none() {
                errors.push(
                    "key `resume_sink`: required when a stream has `resume: deliver`; valid: the app's ResumeSink address, e.g. http://127.0.0.1:15002"
                        .into(),
                );
            }
            if self.amqp_url.is_none() {
                errors.push(
                    "key `amqp_url`: required when a stream has `resume: deliver` (handoffs arrive as RabbitMQ events); valid: amqp://USER:PASS@HOST:5672/VHOST"
                        .into(),
                );
            }
        }
        if !self.streams.is_empty() && !descriptors_set {
            errors.push(
                "key `descriptors`: required when `streams` are configured; valid: a FileDescriptorSet path, or `reflection`"
                    .into(),
            );
        }
        if self.drain_period >= self.shutdown_timeout {
            errors.push(format!(
                "key `drain_period`: {} must be shorter than `shutdown_timeout` ({}), or streams are never handed off",
                humantime::format_duration(self.drain_period),
                humantime::format_duration(self.shutdown_timeout)
            ));
        } else if self.drain_period + self.handoff_read_wait >= self.shutdown_timeout {
            errors.push(format!(
                "key `handoff_read_wait`: {} plus `drain_period` ({}) must be shorter than `shutdown_timeout` ({}), or the handoff has no time left to write and publish",
                humantime::format_duration(self.handoff_read_wait),
                humantime::format_duration(self.drain_period),
                humantime::format_duration(self.shutdown_timeout)
            ));
        }
        if self.reconnect_backoff > self.reconnect_backoff_max {
            errors.push(
                "key `reconnect_backoff`: must not exceed `reconnect_backoff_max`".to_owned(),
            );
        }
        errors
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

struct Parser<'a> {
    map: BTreeMap<String, Value>,
    errors: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str, default: Option<String>) -> String {
        match self.raw(key).map(config_file::scalar) {
            Some(Some(s)) => s,
            Some(None) => {
                self.errors.push(format!("key `{key}`: expected a string"));
                String::new()
            }
            None => default.unwrap_or_default(),
        }
    }

    fn opt_url(&mut self, key: &str, schemes: &[&str]) -> Option<String> {
        let s = self.string(key, None);
        if s.is_empty() {
            return None;
        }
        let scheme = s.split("://").next().unwrap_or_default();
        if !s.contains("://") || !schemes.contains(&scheme) {
            self.errors.push(format!(
                "key `{key}`: {:?} is not a URL with a valid scheme; valid schemes: {}",
                redact(&s),
                schemes.join(", ")
            ));
            return None;
        }
        Some(s)
    }

    fn redis_url(&mut self) -> Option<String> {
        let url = self.opt_url("redis_url", &["redis", "rediss", "redis+unix", "unix"]);
        self.checked(
            "redis_url",
            url,
            reprise_jobs::RedisStore::check_url,
            "redis://[USER:PASS@]HOST:PORT[/DB], rediss://…, redis+unix:///PATH",
        )
    }

    fn amqp_url(&mut self) -> Option<String> {
        // `amqps` is named so that its own error (no TLS in this build) says why.
        let url = self.opt_url("amqp_url", &["amqp", "amqps"]);
        self.checked(
            "amqp_url",
            url,
            reprise_jobs::BusConfig::check_url,
            "amqp://USER:PASS@HOST:5672/VHOST",
        )
    }

    /// `url` (already of a valid scheme) as the client that will use it parses it, without I/O:
    /// a URL only that client refuses is a configuration error, caught by `--check` too.
    fn checked(
        &mut self,
        key: &str,
        url: Option<String>,
        check: impl Fn(&str) -> Result<(), String>,
        valid: &str,
    ) -> Option<String> {
        let url = url?;
        match check(&url) {
            Ok(()) => Some(url),
            Err(problem) => {
                self.errors.push(format!(
                    "key `{key}`: {:?} is not usable: {problem}; valid: {valid}",
                    redact(&url)
                ));
                None
            }
        }
    }

    fn addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let s = self.string(key, Some(default.into()));
        s.parse().unwrap_or_else(|_| {
            self.errors.push(format!(
                "key `{key}`: {s:?} is not a socket address; valid: IP:PORT, e.g. {default}"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn upstream(&mut self) -> http::Uri {
        let s = self.string("upstream", Some("http://127.0.0.1:50051".into()));
        match s.parse::<http::Uri>() {
            Ok(u)
                if u.scheme_str() == Some("http")
                    && u.authority().is_some()
                    && !matches!(u.path_and_query().map(|p| p.as_str()), Some(p) if p != "/") =>
            {
                u
            }
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {
                // gRPC routes by the path (/package.Service/Method): a prefix would be dropped.
                self.errors.push(format!(
                    "key `upstream`: {s:?} has a path; gRPC calls go to /package.Service/Method on the upstream's root, so a path would be ignored; valid: http://HOST:PORT"
                ));
                u
            }
            Ok(u) if u.scheme_str() == Some("https") => {
                self.errors.push(format!(
                    "key `upstream`: {s:?}: TLS to the upstream is not supported; valid: http://HOST:PORT (plaintext h2c; put TLS in the mesh)"
                ));
                u
            }
            _ => {
                self.errors.push(format!(
                    "key `upstream`: {s:?} is not valid; valid: http://HOST:PORT"
                ));
                http::Uri::from_static("http://127.0.0.1:50051")
            }
        }
    }

    fn descriptors(&mut self) -> Option<DescriptorSource> {
        let s = self.string("descriptors", None);
        match s.as_str() {
            "" => None,
            "reflection" => Some(DescriptorSource::Reflection),
            path => Some(DescriptorSource::File(PathBuf::from(path))),
        }
    }

    fn duration_value(&mut self, key: &str, s: &str) -> Option<Duration> {
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.errors.push(format!(
                    "key `{key}`: {s:?} is not a positive duration; valid: a number with a unit, e.g. 100ms, 10s, 5m"
                ));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, default: &str) -> Duration {
        let s = self.string(key, Some(default.into()));
        self.duration_value(key, &s)
            .unwrap_or(Duration::from_secs(1))
    }

    fn duration_or_zero(&mut self, key: &str, default: &str) -> Duration {
        let s = self.string(key, Some(default.into()));
        if s.trim() == "0" {
            return Duration::ZERO;
        }
        match humantime::parse_duration(&s) {
            Ok(d) => d,
            Err(_) => {
                self.errors.push(format!(
                    "key `{key}`: {s:?} is not a duration; valid: 0 or a number with a unit, e.g. 500ms, 2s"
                ));
                Duration::ZERO
            }
        }
    }

    /// A whole number of `unit` from `min` to `max`.
    fn bounded(&mut self, key: &str, default: usize, min: u64, max: u64, unit: &str) -> usize {
        let n = self.whole(
            key,
            default,
            max,
            &format!("a number of {unit} from {min} to {max}"),
        );
        if (n as u64) < min {
            self.errors.push(format!(
                "key `{key}`: {n} is not a number of {unit} from {min} to {max}"
            ));
        }
        n
    }

    /// A whole number from 1 to `max`.
    fn count(&mut self, key: &str, default: usize, max: usize) -> usize {
        self.whole(
            key,
            default,
            max as u64,
            &format!("a whole number from 1 to {max}"),
        )
    }

    /// A whole number above zero, e.g. of `unit` "bytes" or "threads".
    fn positive(&mut self, key: &str, default: usize, unit: &str) -> usize {
        self.whole(
            key,
            default,
            u64::MAX,
            &format!("a positive number of {unit}"),
        )
    }

    /// A whole number from 1 to `max`; otherwise an error saying the value is not `expected`.
    fn whole(&mut self, key: &str, default: usize, max: u64, expected: &str) -> usize {
        match self.raw(key) {
            None => default,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0 && n <= max) => {
                n.as_u64().map_or(default, |n| n as usize)
            }
            Some(v) => {
                self.errors
                    .push(format!("key `{key}`: {v:?} is not {expected}"));
                default
            }
        }
    }

    fn choice(&mut self, key: &str, valid: &[&str], default: &str) -> String {
        let s = self.string(key, Some(default.into()));
        if !valid.contains(&s.as_str()) {
            self.errors.push(format!(
                "key `{key}`: {s:?} is not valid; valid: {}",
                valid.join(", ")
            ));
        }
        s
    }

    fn streams(&mut self, max_outage: Duration) -> Vec<StreamConfig> {
        let items = match self.raw("streams") {
            None => return Vec::new(),
            Some(Value::Sequence(items)) => items.clone(),
            Some(_) => {
                self.errors
                    .push("key `streams`: expected a list of stream entries".into());
                return Vec::new();
            }
        };
        let mut out: Vec<StreamConfig> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(stream) = self.stream(i, item, max_outage) else {
                continue;
            };
            if out.iter().any(|s| s.method == stream.method) {
                self.errors.push(format!(
                    "key `streams[{i}].method`: {:?} is configured twice",
                    stream.method
                ));
            }
            out.push(stream);
        }
        out
    }

    /// The entry `streams[i]`; `max_outage` is the top-level default.
    fn stream(&mut self, i: usize, item: &Value, max_outage: Duration) -> Option<StreamConfig> {
        let Value::Mapping(m) = item else {
            self.errors
                .push(format!("key `streams[{i}]`: expected a mapping"));
            return None;
        };
        let fields = self.stream_fields(i, m);
        let text = |name: &str| fields.get(name).and_then(config_file::scalar);
        let mut required = |name: &str| -> String {
            match text(name) {
                Some(s) if !s.is_empty() => s,
                _ => {
                    self.errors
                        .push(format!("key `streams[{i}].{name}`: required"));
                    String::new()
                }
            }
        };
        let method = required("method").trim_start_matches('/').to_owned();
        let offset_field = required("offset_field");
        let resume_field = required("resume_field");
        let resume = match text("resume").as_deref() {
            None | Some("on_request") => ResumeMode::OnRequest,
            Some("deliver") => ResumeMode::Deliver,
            Some(other) => {
                self.errors.push(format!(
                    "key `streams[{i}].resume`: {other:?} is not valid; valid: on_request, deliver"
                ));
                ResumeMode::OnRequest
            }
        };
        let on_app_cancel = match text("on_app_cancel").as_deref() {
            None | Some("restart") => AppCancel::Restart,
            Some("resume") => AppCancel::Resume,
            Some(other) => {
                self.errors.push(format!(
                    "key `streams[{i}].on_app_cancel`: {other:?} is not valid; valid: restart (the default: a call the app cancels or lets time out starts again from the beginning), resume (it continues after what the app's connection took)"
                ));
                AppCancel::Restart
            }
        };
        let resume_inclusive = self.resume_inclusive(i, fields.get("resume_inclusive"));
        let retry_codes = self.retry_codes(i, fields.get("retry_codes"));
        let max_outage = match text("max_outage") {
            Some(s) => self
                .duration_value(&format!("streams[{i}].max_outage"), &s)
                .unwrap_or(max_outage),
            None => max_outage,
        };
        Some(StreamConfig {
            method,
            offset_field,
            resume_field,
            resume_inclusive,
            resume,
            on_app_cancel,
            retry_codes,
            max_outage,
        })
    }

    /// The known keys of `streams[i]`; an unknown one is an error naming the valid ones.
    fn stream_fields(&mut self, i: usize, m: &serde_yaml::Mapping) -> BTreeMap<String, Value> {
        let mut fields = BTreeMap::new();
        for (k, v) in m {
            match k.as_str() {
                Some(k) if STREAM_KEYS.contains(&k) => {
                    fields.insert(k.to_owned(), v.clone());
                }
                other => self.errors.push(format!(
                    "key `streams[{i}].{}`: unknown; valid keys: {}",
                    other.unwrap_or("?"),
                    STREAM_KEYS.join(", ")
                )),
            }
        }
        fields
    }

    fn resume_inclusive(&mut self, i: usize, value: Option<&Value>) -> bool {
        match value.map(config_file::scalar) {
            None => false,
            Some(Some(s)) if s == "false" => false,
            Some(Some(s)) if s == "true" => true,
            Some(other) => {
                self.errors.push(format!(
                    "key `streams[{i}].resume_inclusive`: {} is not valid; valid: true (the resume field means \"from this offset, inclusive\"), false (\"strictly after it\", the default)",
                    other.map_or_else(|| "a non-scalar value".to_owned(), |s| format!("{s:?}"))
                ));
                false
            }
        }
    }

    /// `retry_codes` of `streams[i]`: gRPC code names; default `[unavailable]`.
    fn retry_codes(&mut self, i: usize, value: Option<&Value>) -> Vec<i32> {
        match value {
            None => vec![14],
            Some(Value::Sequence(codes)) => codes
                .iter()
                .filter_map(|c| {
                    let name = config_file::scalar(c).unwrap_or_default().to_lowercase();
                    let code = code_from_name(&name);
                    if code.is_none() {
                        self.errors.push(format!(
                            "key `streams[{i}].retry_codes`: {name:?} is not valid; valid: {}",
                            RETRYABLE_CODE_NAMES.join(", ")
                        ));
                    }
                    code
                })
                .collect(),
            Some(_) => {
                self.errors.push(format!(
                    "key `streams[{i}].retry_codes`: expected a list, e.g. [unavailable, internal]"
                ));
                vec![14]
            }
        }
    }
}

/// Numeric gRPC code for a retryable code name (`unavailable` → 14); `None` for a name that is
/// not a code or not one a stream may resume on ([`RETRYABLE_CODE_NAMES`]).
pub fn code_from_name(name: &str) -> Option<i32> {
    RETRYABLE_CODE_NAMES
        .contains(&name)
        .then(|| crate::grpc::code::from_name(name))
        .flatten()
}

/// A URL with its password replaced, for logs and errors: the one redactor every binary uses.
pub fn redact(url: &str) -> String {
    reprise_jobs::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
        Config::parse(yaml, &BTreeMap::new())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:15001");
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:50051/");
        assert_eq!(c.key_prefix, "reprise");
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:15090");
        assert_eq!(c.checkpoint_interval, Duration::from_millis(100));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(c.worker_threads, 1);
        assert!(c.redis_url.is_none());
    }

    #[test]
    fn handoff_read_wait_defaults_to_what_the_shutdown_deadline_leaves_room_for() {
        assert_eq!(
            parse("").expect("valid").handoff_read_wait,
            Duration::from_secs(10)
        );
        // A short deadline shrinks the default instead of refusing the config.
        let c = parse("shutdown_timeout: 4s\n").expect("valid");
        assert_eq!(c.handoff_read_wait, Duration::from_secs(2));
        let c = parse("handoff_read_wait: 0\n").expect("valid");
        assert_eq!(c.handoff_read_wait, Duration::ZERO);
        let c = parse("handoff_read_wait: 12s\n").expect("valid");
        assert_eq!(c.handoff_read_wait, Duration::from_secs(12));
        // Set, it must fit.
        let text = parse("shutdown_timeout: 4s\nhandoff_read_wait: 3s\n")
            .expect_err("3 s + 1 s of drain leave nothing of 4 s")
            .to_string();
        assert!(
            text.contains("key `handoff_read_wait`") && text.contains("shutdown_timeout"),
            "{text}"
        );
        let text = parse("handoff_read_wait: soon\n")
            .expect_err("not a duration")
            .to_string();
        assert!(text.contains("key `handoff_read_wait`"), "{text}");
    }

    #[test]
    fn worker_threads_must_be_a_positive_count() {
        assert_eq!(
            parse("worker_threads: 4\n").expect("valid").worker_threads,
            4
        );
        let env = BTreeMap::from([("REPRISE_WORKER_THREADS".to_owned(), "2".to_owned())]);
        let c = Config::parse("", &env).expect("valid");
        assert_eq!(c.worker_threads, 2);
        for bad in ["0", "-1", "two", "1.5"] {
            let text = parse(&format!("worker_threads: {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(
                text.contains("key `worker_threads`")
                    && text.contains("positive number of threads"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn upstream_connections_is_a_count_up_to_the_limit() {
        assert_eq!(parse("").expect("valid").upstream_connections, 1);
        assert_eq!(
            parse("upstream_connections: 64\n")
                .expect("valid")
                .upstream_connections,
            64
        );
        let env = BTreeMap::from([("REPRISE_UPSTREAM_CONNECTIONS".to_owned(), "3".to_owned())]);
        assert_eq!(
            Config::parse("", &env).expect("valid").upstream_connections,
            3
        );
        for bad in ["0", "65", "-2", "many", "2.5"] {
            let text = parse(&format!("upstream_connections: {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(
                text.contains("key `upstream_connections`") && text.contains("from 1 to 64"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn every_error_is_reported_with_key_and_choices() {
        let err = parse(
            "listen: nope\nbogus: 1\ncheckpoint_interval: fast\nlog_format: xml\nstreams:\n  - method: a.B/C\n    offset_field: id\n    resume: later\n    colour: red\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "key `listen`",
            "unknown key `bogus`; valid keys: listen, upstream",
            "key `checkpoint_interval`",
            "valid: text, json",
            "key `streams[0].resume_field`: required",
            "valid: on_request, deliver",
            "key `streams[0].colour`: unknown; valid keys: method",
            "key `descriptors`: required",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn env_overrides_win_and_carry_yaml() {
        let env = BTreeMap::from([
            ("REPRISE_KEY_PREFIX".to_owned(), "t1".to_owned()),
            ("REPRISE_LEASE_TTL".to_owned(), "3s".to_owned()),
            (
                "REPRISE_STREAMS".to_owned(),
                "[{method: /a.B/C, offset_field: id, resume_field: after}]".to_owned(),
            ),
            ("REPRISE_DESCRIPTORS".to_owned(), "reflection".to_owned()),
        ]);
        let c = Config::parse("key_prefix: file\n", &env).expect("valid");
        assert_eq!(c.key_prefix, "t1");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.streams[0].method, "a.B/C");
        assert_eq!(c.streams[0].retry_codes, vec![14]);
        assert_eq!(c.descriptors, DescriptorSource::Reflection);
    }

    #[test]
    fn the_pod_is_named_by_the_downward_api_or_the_config() {
        let downward = BTreeMap::from([
            ("POD_NAME".to_owned(), "users-0".to_owned()),
            ("POD_NAMESPACE".to_owned(), "demo".to_owned()),
            (
                "POD_UID".to_owned(),
                "0b6c2e5e-6c1d-4d7e-9c55-1f0f1c2d3e4f".to_owned(),
            ),
        ]);
        let c = Config::parse("", &downward).expect("valid");
        assert_eq!(
            (
                c.pod_name.as_str(),
                c.pod_namespace.as_str(),
                c.pod_uid.as_str()
            ),
            ("users-0", "demo", "0b6c2e5e-6c1d-4d7e-9c55-1f0f1c2d3e4f")
        );
        let c = Config::parse("pod_namespace: file\npod_uid: u-file\n", &BTreeMap::new())
            .expect("valid");
        assert_eq!(
            (c.pod_namespace.as_str(), c.pod_uid.as_str()),
            ("file", "u-file")
        );
        let mut env = downward;
        env.insert("REPRISE_POD_NAMESPACE".to_owned(), "override".to_owned());
        let c = Config::parse("pod_namespace: file\n", &env).expect("valid");
        assert_eq!(c.pod_namespace, "override");
        let c = Config::parse("", &BTreeMap::new()).expect("valid");
        assert_eq!(
            (c.pod_namespace.as_str(), c.pod_uid.as_str()),
            ("", ""),
            "unknown"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&password=secret"),
            "redis+unix:///run/redis.sock?db=1&password=***"
        );
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let errors = parse("redis_url: foo://u:secret@h:6379\namqp_url: x://h/?password=secret\n")
            .expect_err("bad schemes")
            .0
            .join("\n");
        assert!(errors.contains("key `redis_url`"), "{errors}");
        assert!(errors.contains("key `amqp_url`"), "{errors}");
        assert!(!errors.contains("secret"), "{errors}");
    }
}
