//! Every annotation of one pod, validated into one typed struct before anything is patched.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::annotations as a;
use crate::{InjectError, Settings};

/// What the sidecar of one pod looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub native_sidecar: bool,
    pub config_map: String,
    /// `REPRISE_SERVICE`; `None`: the config's.
    pub service: Option<String>,
    /// `REPRISE_UPSTREAM` from the annotation; `None`: from target-env, else the config's.
    pub upstream: Option<String>,
    pub target_env: Vec<String>,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub log_level: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// Set only when annotated: otherwise the ConfigMap's value holds.
    pub proxy_port_set: bool,
    pub admin_port_set: bool,
    pub shutdown_timeout: Duration,
    pub shutdown_timeout_set: Option<String>,
    pub drain_period: Option<String>,
    pub amqp_secret: Option<String>,
}

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];

impl Options {
    /// Validates every annotation; the error names all invalid ones, not only the first.
    pub fn parse(metadata: &ObjectMeta, settings: &Settings) -> Result<Options, InjectError> {
        let empty = BTreeMap::new();
        let ann = metadata.annotations.as_ref().unwrap_or(&empty);
        let labels = metadata.labels.as_ref().unwrap_or(&empty);
        let get = |key: &str| ann.get(key).map(|v| v.trim());
        let mut problems = Problems::default();

        let native_sidecar = problems
            .check(get(a::NATIVE_SIDECAR).map(|v| boolean(a::NATIVE_SIDECAR, v)))
            .unwrap_or(settings.native_sidecar);
        let service = match get(a::SERVICE) {
            Some(s) => problems.check(Some(dns_label(a::SERVICE, s))),
            None => labels
                .get("app.kubernetes.io/name")
                .or_else(|| labels.get("app"))
                .filter(|s| !s.is_empty())
                .cloned(),
        };
        let config_map = match get(a::CONFIG) {
            Some(name) => problems.check(Some(dns_subdomain(a::CONFIG, name))),
            None => None,
        }
        .unwrap_or_else(|| match &service {
            Some(s) if dns_subdomain("", &format!("{s}-reprise")).is_ok() => {
                format!("{s}-reprise")
            }
            _ => settings.config_map.clone(),
        });
        let upstream = problems.check(get(a::UPSTREAM).map(|u| url(a::UPSTREAM, u)));
        let target_env = problems
            .check(get(a::TARGET_ENV).map(env_names))
            .unwrap_or_default();
        let image = problems
            .check(get(a::IMAGE).map(image))
            .unwrap_or_else(|| settings.image.clone());
        let image_pull_policy = match get(a::IMAGE_PULL_POLICY) {
            None => settings.image_pull_policy.clone(),
            Some(p) => problems.check(Some(one_of(a::IMAGE_PULL_POLICY, p, PULL_POLICIES))),
        };
        let log_level = problems
            .check(get(a::LOG_LEVEL).map(|l| one_of(a::LOG_LEVEL, l, LEVELS)))
            .unwrap_or_else(|| settings.log_level.clone());
        let mut quantity_or = |key: &str, default: &str| {
            problems
                .check(get(key).map(|q| quantity(key, q)))
                .unwrap_or_else(|| default.to_owned())
        };
        let cpu_request = quantity_or(a::CPU_REQUEST, &settings.cpu_request);
        let cpu_limit = quantity_or(a::CPU_LIMIT, &settings.cpu_limit);
        let memory_request = quantity_or(a::MEMORY_REQUEST, &settings.memory_request);
        let memory_limit = quantity_or(a::MEMORY_LIMIT, &settings.memory_limit);
        let proxy_port = problems.check(get(a::PROXY_PORT).map(|p| port(a::PROXY_PORT, p)));
        let admin_port = problems.check(get(a::ADMIN_PORT).map(|p| port(a::ADMIN_PORT, p)));
        let (proxy_port_set, admin_port_set) = (proxy_port.is_some(), admin_port.is_some());
        let proxy_port = proxy_port.unwrap_or(settings.proxy_port);
        let admin_port = admin_port.unwrap_or(settings.admin_port);
        if proxy_port == admin_port {
            let key = if admin_port_set {
                a::ADMIN_PORT
            } else {
                a::PROXY_PORT
            };
            problems.push(InjectError::new(
                key,
                format!("port {proxy_port} is both the proxy and the admin port"),
                "two different ports",
            ));
        }
        let shutdown =
            problems.check(get(a::SHUTDOWN_TIMEOUT).map(|d| duration(a::SHUTDOWN_TIMEOUT, d)));
        let shutdown_timeout = shutdown
            .as_ref()
            .map_or(settings.shutdown_timeout, |(d, _)| *d);
        let drain_period =
            problems.check(get(a::DRAIN_PERIOD).map(|text| drain_period(text, shutdown_timeout)));
        let amqp_secret =
            problems.check(get(a::AMQP_SECRET).map(|s| dns_subdomain(a::AMQP_SECRET, s)));
        problems.into_result()?;
        Ok(Options {
            image,
            image_pull_policy,
            native_sidecar,
            config_map,
            service,
            upstream,
            target_env,
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
            log_level,
            proxy_port,
            admin_port,
            proxy_port_set,
            admin_port_set,
            shutdown_timeout,
            shutdown_timeout_set: shutdown.map(|(_, text)| text),
            drain_period,
            amqp_secret,
        })
    }
}

/// The problems found so far; a value that fails its check is replaced by its default so the
/// remaining annotations are still checked.
#[derive(Default)]
struct Problems(Vec<InjectError>);

impl Problems {
    /// `None` when the annotation is absent or invalid (then it is recorded).
    fn check<T>(&mut self, value: Option<Result<T, InjectError>>) -> Option<T> {
        match value? {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    fn push(&mut self, e: InjectError) {
        self.0.push(e);
    }

    fn into_result(self) -> Result<(), InjectError> {
        match InjectError::all(self.0) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, InjectError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(InjectError::new(
            key,
            format!("`{other}` is not a value"),
            "true, false",
        )),
    }
}

fn env_names(list: &str) -> Result<Vec<String>, InjectError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if !is_env_name(name) {
            return Err(InjectError::new(
                a::TARGET_ENV,
                format!("`{name}` is not an environment variable name"),
                "names like TARGET_URL, comma-separated",
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn image(value: &str) -> Result<String, InjectError> {
    if !value.is_empty() && !value.contains(char::is_whitespace) {
        Ok(value.to_owned())
    } else {
        Err(InjectError::new(
            a::IMAGE,
            format!("`{value}` is not an image reference"),
            "an image reference without spaces, e.g. registry/reprise:1.0",
        ))
    }
}

/// The sidecar's rule: zero (no drain) is allowed, and it must end before the shutdown deadline
/// or streams are never handed off.
fn drain_period(text: &str, shutdown_timeout: Duration) -> Result<String, InjectError> {
    let d = if text == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(text).map_err(|_| {
            InjectError::new(
                a::DRAIN_PERIOD,
                format!("`{text}` is not a duration"),
                "0 or a duration like 500ms, 2s",
            )
        })?
    };
    if d >= shutdown_timeout {
        return Err(InjectError::new(
            a::DRAIN_PERIOD,
            format!(
                "`{text}` is not shorter than the shutdown timeout ({})",
                humantime::format_duration(shutdown_timeout)
            ),
            "a duration shorter than reprise.dev/shutdown-timeout",
        ));
    }
    Ok(text.to_owned())
}

fn one_of(key: &str, value: &str, valid: &[&str]) -> Result<String, InjectError> {
    if valid.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(InjectError::new(
            key,
            format!("`{value}` is not a value"),
            valid.join(", "),
        ))
    }
}

fn port(key: &str, value: &str) -> Result<u16, InjectError> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(InjectError::new(
            key,
            format!("`{value}` is not a port"),
            "1 to 65535",
        )),
    }
}

fn duration(key: &str, value: &str) -> Result<(Duration, String), InjectError> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok((d, value.to_owned())),
        _ => Err(InjectError::new(
            key,
            format!("`{value}` is not a duration"),
            "a positive duration like 500ms, 20s, 1m",
        )),
    }
}

/// A Kubernetes quantity (`50m`, `1`, `0.5`, `128Mi`, `1G`); exponents are not accepted.
fn quantity(key: &str, value: &str) -> Result<String, InjectError> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let digits_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if digits_ok && SUFFIXES.contains(&suffix) {
        Ok(value.to_owned())
    } else {
        Err(InjectError::new(
            key,
            format!("`{value}` is not a Kubernetes quantity"),
            "a number with an optional suffix m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei (e.g. 100m, 64Mi)",
        ))
    }
}

/// `http://host:port` or `https://host:port` (a path is not accepted: the sidecar forwards paths).
fn url(key: &str, value: &str) -> Result<String, InjectError> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"));
    match rest {
        Some(authority) if host_port(authority) => Ok(value.to_owned()),
        _ => Err(InjectError::new(
            key,
            format!("`{value}` is not an upstream URL"),
            "http://HOST:PORT or https://HOST:PORT",
        )),
    }
}

pub(crate) fn host_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', '@', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn dns_label(key: &str, value: &str) -> Result<String, InjectError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
        })
        && !value.starts_with(['-', '.', '_']);
    if ok {
        Ok(value.to_owned())
    } else {
        Err(InjectError::new(
            key,
            format!("`{value}` is not a name"),
            "lower-case letters, digits, `-`, `.`, `_`, at most 63 characters",
        ))
    }
}

/// A ConfigMap or Secret name (RFC 1123 subdomain).
fn dns_subdomain(key: &str, value: &str) -> Result<String, InjectError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(InjectError::new(
            key,
            format!("`{value}` is not an object name"),
            "lower-case letters, digits, `-` and `.` (RFC 1123), at most 253 characters",
        ))
    }
}
