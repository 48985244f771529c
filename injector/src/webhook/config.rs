//! The webhook's configuration: YAML file, `REPRISE_<KEY>` environment overrides, defaults.
//! Every bad key or value is reported at once, naming the key and the valid choices.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use reprise_jobs::config_file;

pub const KEYS: &[&str] = &[
    "listen",
    "tls_cert",
    "tls_key",
    "metrics_listen",
    "sidecar_image",
    "image_pull_policy",
    "shutdown_timeout",
    "log_format",
    "kube",
    "namespace_cache_ttl",
];

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub metrics_listen: SocketAddr,
    pub sidecar_image: String,
    pub image_pull_policy: Option<String>,
    pub shutdown_timeout: Duration,
    pub json_logs: bool,
    /// `None`: read namespaces when a kubeconfig or an in-cluster service account is found.
    pub kube: Option<bool>,
    pub namespace_cache_ttl: Duration,
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
        let mut addr = |key: &str, default: &str| -> SocketAddr {
            let raw = text_of(key).unwrap_or_else(|| default.into());
            raw.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "key `{key}`: {raw:?} is not a socket address; valid: IP:PORT, e.g. {default}"
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = addr("listen", "0.0.0.0:8443");
        let metrics_listen = addr("metrics_listen", "0.0.0.0:9090");
        // The certificate files must exist at start-up: cert-manager writes them before the pod
        // starts (a mounted Secret), and a typo should not wait for the first handshake.
        let mut pem = |key: &str| -> PathBuf {
            match text_of(key).filter(|s| !s.is_empty()) {
                None => {
                    errors.push(format!("key `{key}` is required; valid: a PEM file"));
                    PathBuf::new()
                }
                Some(p) => {
                    let path = PathBuf::from(&p);
                    if let Err(e) = std::fs::metadata(&path) {
                        errors.push(format!("key `{key}`: {p}: {e}; valid: a readable PEM file"));
                    }
                    path
                }
            }
        };
        let tls_cert = pem("tls_cert");
        let tls_key = pem("tls_key");
        let sidecar_image =
            text_of("sidecar_image").unwrap_or_else(|| reprise_injector::Settings::default().image);
        let image_pull_policy = match text_of("image_pull_policy").as_deref() {
            None | Some("") => None,
            Some(p @ ("Always" | "IfNotPresent" | "Never")) => Some(p.to_owned()),
            Some(other) => {
                errors.push(format!(
                    "key `image_pull_policy`: {other:?} is not valid; valid: Always, IfNotPresent, Never"
                ));
                None
            }
        };
        let timeout = text_of("shutdown_timeout").unwrap_or_else(|| "10s".into());
        let shutdown_timeout = humantime::parse_duration(&timeout).unwrap_or_else(|_| {
            errors.push(format!(
                "key `shutdown_timeout`: {timeout:?} is not a duration; valid: e.g. 500ms, 10s"
            ));
            Duration::from_secs(10)
        });
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
        let ttl = text_of("namespace_cache_ttl").unwrap_or_else(|| "10s".into());
        let namespace_cache_ttl = humantime::parse_duration(&ttl).unwrap_or_else(|_| {
            errors.push(format!(
                "key `namespace_cache_ttl`: {ttl:?} is not a duration; valid: e.g. 0s, 10s, 1m"
            ));
            Duration::from_secs(10)
        });
        if errors.is_empty() {
            Ok(Config {
                kube,
                namespace_cache_ttl,
                listen,
                tls_cert,
                tls_key,
                metrics_listen,
                sidecar_image,
                image_pull_policy,
                shutdown_timeout,
                json_logs,
            })
        } else {
            Err(errors)
        }
    }

    // The library's `Settings` has more fields than the webhook sets.
    #[allow(clippy::needless_update)]
    pub fn settings(&self) -> reprise_injector::Settings {
        reprise_injector::Settings {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_key() {
        let errors = Config::parse(
            "colour: red\ntls_cert: /nonexistent/tls.crt\nimage_pull_policy: Sometimes\n",
            &BTreeMap::new(),
        )
        .expect_err("invalid")
        .join("\n");
        for needle in [
            "unknown key `colour`; valid keys: listen",
            "key `tls_cert`: /nonexistent/tls.crt",
            "key `tls_key` is required",
            "key `image_pull_policy`: \"Sometimes\" is not valid; valid: Always",
        ] {
            assert!(errors.contains(needle), "{needle:?} in {errors}");
        }
    }

    #[test]
    fn env_overrides_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "x")?;
        let env = BTreeMap::from([
            ("REPRISE_TLS_KEY".to_owned(), cert.display().to_string()),
            ("REPRISE_LISTEN".to_owned(), "127.0.0.1:9443".to_owned()),
        ]);
        let text = format!("tls_cert: {}\nlisten: 0.0.0.0:1\n", cert.display());
        let c = Config::parse(&text, &env).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
        assert_eq!(c.listen, "127.0.0.1:9443".parse()?);
        assert_eq!(c.metrics_listen, "0.0.0.0:9090".parse()?);
        Ok(())
    }
}
