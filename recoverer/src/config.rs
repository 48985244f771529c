//! The recoverer's configuration: YAML file, `REPRISE_<KEY>` environment overrides, defaults.
//! Every bad key or value is reported at once, naming the key and the valid choices.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use reprise_jobs::{config_file, redact_url};
use serde_yaml::Value;

pub const KEYS: &[&str] = &[
    "redis_url",
    "amqp_url",
    "key_prefix",
    "metrics_listen",
    "reconcile_interval",
    "handoff_retry",
    "lease_grace",
    "namespaces",
    "label_selector",
    "kube",
    "sidecar_container",
    "log_format",
];

/// `Debug` masks the passwords in the URLs, like every message that shows one.
#[derive(Clone)]
pub struct Config {
    pub redis_url: String,
    pub amqp_url: Option<String>,
    pub key_prefix: String,
    pub metrics_listen: SocketAddr,
    pub reconcile_interval: Duration,
    /// How long a `deliver` job let go may wait for a pod before its event is published again
    /// (then twice as long each time, up to 32 times this).
    pub handoff_retry: Duration,
    /// How long leases go unjudged after Redis was unreachable or restarted (another
    /// `run_id`): the owners could not renew meanwhile, and a restarted Redis holds leases
    /// as old as its last write to disk. At least the sidecars' `lease_ttl`.
    pub lease_grace: Duration,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    pub label_selector: String,
    /// `None`: use Kubernetes when a kubeconfig or an in-cluster service account is found.
    pub kube: Option<bool>,
    pub sidecar_container: String,
    pub json_logs: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("amqp_url", &self.amqp_url.as_deref().map(redact_url))
            .field("key_prefix", &self.key_prefix)
            .field("metrics_listen", &self.metrics_listen)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("handoff_retry", &self.handoff_retry)
            .field("lease_grace", &self.lease_grace)
            .field("namespaces", &self.namespaces)
            .field("label_selector", &self.label_selector)
            .field("kube", &self.kube)
            .field("sidecar_container", &self.sidecar_container)
            .field("json_logs", &self.json_logs)
            .finish()
    }
}

impl Config {
    pub fn load(
        path: Option<&std::path::Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, Vec<String>> {
        Self::parse(&config_file::read(path)?, env)
    }

    pub fn parse(text: &str, env: &BTreeMap<String, String>) -> Result<Config, Vec<String>> {
        let config_file::Values {
            values: map,
            mut errors,
        } = config_file::values(text, env, KEYS)?;
        let text_of = |key: &str| -> Option<String> { config_file::scalar(map.get(key)?) };
        let redis_url = text_of("redis_url").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        errors.extend(check_redis_url(&redis_url));
        let amqp_url = text_of("amqp_url").filter(|u| !u.is_empty());
        errors.extend(amqp_url.as_deref().and_then(check_amqp_url));
        let key_prefix = text_of("key_prefix").unwrap_or_else(|| "reprise".into());
        let listen = text_of("metrics_listen").unwrap_or_else(|| "127.0.0.1:15091".into());
        let metrics_listen = listen.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "key `metrics_listen`: {listen:?} is not a socket address; valid: IP:PORT, e.g. 0.0.0.0:9090"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let mut positive = |key: &str, default: Duration, examples: &str| {
            let Some(text) = text_of(key) else {
                return default;
            };
            match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    errors.push(format!(
                        "key `{key}`: {text:?} is not a positive duration; valid: e.g. {examples}"
                    ));
                    default
                }
            }
        };
        let reconcile_interval =
            positive("reconcile_interval", Duration::from_secs(5), "500ms, 5s");
        let handoff_retry = positive(
            "handoff_retry",
            crate::reconcile::DEFAULT_HANDOFF_RETRY,
            "2s, 10s",
        );
        let lease_grace = positive(
            "lease_grace",
            crate::reconcile::DEFAULT_LEASE_GRACE,
            "10s, 30s",
        );
        let namespaces = namespaces(map.get("namespaces"), &mut errors);
        let label_selector =
            text_of("label_selector").unwrap_or_else(|| "reprise.dev/injected=true".into());
        let kube = match text_of("kube").as_deref() {
            None | Some("auto") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                errors.push(format!(
                    "key `kube`: {other:?} is not valid; valid: true, false, auto"
                ));
                None
            }
        };
        let sidecar_container =
            text_of("sidecar_container").unwrap_or_else(|| "reprise-sidecar".into());
        let json_logs = match text_of("log_format").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                errors.push(format!(
                    "key `log_format`: {other:?} is not valid; valid: text, json"
                ));
                false
            }
        };
        if errors.is_empty() {
            Ok(Config {
                redis_url,
                amqp_url,
                key_prefix,
                metrics_listen,
                reconcile_interval,
                handoff_retry,
                lease_grace,
                namespaces,
                label_selector,
                kube,
                sidecar_container,
                json_logs,
            })
        } else {
            Err(errors)
        }
    }
}

/// Problems with `redis_url`: a scheme the recoverer does not speak, or a URL the Redis client
/// cannot parse (checked without I/O).
fn check_redis_url(url: &str) -> Option<String> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Some(format!(
            "key `redis_url`: {:?} is not valid; valid schemes: redis, rediss",
            redact_url(url)
        ));
    }
    reprise_jobs::RedisStore::check_url(url).err().map(|problem| {
        format!(
            "key `redis_url`: {:?} is not usable: {problem}; valid: redis://[USER:PASS@]HOST:PORT[/DB]",
            redact_url(url)
        )
    })
}

/// Problems with `amqp_url`, as the bus will parse it.
fn check_amqp_url(url: &str) -> Option<String> {
    if !url.starts_with("amqp://") {
        return Some(format!(
            "key `amqp_url`: {:?} is not valid; valid scheme: amqp",
            redact_url(url)
        ));
    }
    reprise_jobs::BusConfig::check_url(url).err().map(|problem| {
        format!(
            "key `amqp_url`: {:?} is not usable: {problem}; valid: amqp://USER:PASS@HOST:5672/VHOST",
            redact_url(url)
        )
    })
}

/// `namespaces`: a list, or a comma-separated string; empty means all.
fn namespaces(value: Option<&Value>, errors: &mut Vec<String>) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            errors.push("key `namespaces`: expected a list of namespace names ([] = all)".into());
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let env = BTreeMap::from([("REPRISE_KUBE".to_owned(), "false".to_owned())]);
        let c = Config::parse("namespaces: [a, b]\nreconcile_interval: 2s\n", &env).expect("valid");
        assert_eq!(c.namespaces, ["a", "b"]);
        assert_eq!(c.reconcile_interval, Duration::from_secs(2));
        assert_eq!(c.kube, Some(false));
        assert_eq!(c.label_selector, "reprise.dev/injected=true");
        assert_eq!(c.key_prefix, "reprise");
        assert_eq!(c.lease_grace, crate::reconcile::DEFAULT_LEASE_GRACE);
        let c = Config::parse("lease_grace: 30s\n", &env).expect("valid");
        assert_eq!(c.lease_grace, Duration::from_secs(30));
    }

    #[test]
    fn urls_are_shown_without_their_passwords() {
        let env = BTreeMap::from([
            (
                "REPRISE_REDIS_URL".to_owned(),
                "redis://u:s3cret@h:6379".to_owned(),
            ),
            (
                "REPRISE_AMQP_URL".to_owned(),
                "amqp://u:s3cret@h:5672/%2f".to_owned(),
            ),
        ]);
        let config = Config::parse("", &env).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redis://u:***@h:6379"), "{debug}");
    }

    #[test]
    fn every_error_names_its_key() {
        let errors = Config::parse(
            "colour: red\nkube: maybe\nreconcile_interval: soon\nlease_grace: 0s\n",
            &BTreeMap::new(),
        )
        .expect_err("invalid")
        .join("\n");
        for needle in [
            "unknown key `colour`; valid keys: redis_url",
            "key `kube`: \"maybe\" is not valid; valid: true, false, auto",
            "key `reconcile_interval`",
            "key `lease_grace`: \"0s\" is not a positive duration; valid: e.g. 10s, 30s",
        ] {
            assert!(errors.contains(needle), "{needle:?} in {errors}");
        }
    }

    #[test]
    fn urls_the_clients_cannot_parse_are_configuration_errors() {
        let errors = Config::parse(
            "redis_url: redis://:s3cret@h:99999\namqp_url: amqp://u:s3cret@h:nope/%2f\n",
            &BTreeMap::new(),
        )
        .expect_err("invalid")
        .join("\n");
        assert!(errors.contains("key `redis_url`"), "{errors}");
        assert!(errors.contains("key `amqp_url`"), "{errors}");
        assert!(errors.contains("invalid port number"), "{errors}");
        assert!(!errors.contains("s3cret"), "{errors}");
    }
}
