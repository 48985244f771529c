//! The serving certificate, re-read when its files change so that a rotation (cert-manager
//! renews the Secret, the kubelet updates the mounted files) reaches new handshakes without a
//! restart. A pair that does not load keeps the previous one in service: a half-written
//! rotation (the new certificate with the old key) must not take the webhook down.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

/// How often the files' modification times are compared. The kubelet takes up to a minute to
/// update a mounted Secret, so a second here is not what a rotation waits for.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("key `tls_cert`: {path}: {problem}; valid: a PEM file with the certificate chain")]
    Cert { path: String, problem: String },
    #[error(
        "key `tls_key`: {path}: {problem}; valid: a PEM file with one private key (PKCS#8, PKCS#1 or SEC1)"
    )]
    Key { path: String, problem: String },
}

/// Both files' modification times: a rotation that rewrites either is seen.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

#[derive(Debug)]
pub struct Reloading {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

impl Reloading {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = stamp(cert_path, key_path);
        let key = load_pair(&provider, cert_path, key_path)?;
        Ok(Arc::new(Reloading {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new((stamp, key)),
        }))
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Reloads when either file changed since the pair in service was read; returns whether
    /// a new pair is now in service.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert_path, &self.key_path);
        let seen = match self.current.read() {
            Ok(guard) => guard.0,
            Err(poisoned) => poisoned.into_inner().0,
        };
        if now == seen {
            return Ok(false);
        }
        let loaded = load_pair(&self.provider, &self.cert_path, &self.key_path);
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match loaded {
            Ok(key) => {
                *guard = (now, key);
                Ok(true)
            }
            Err(e) => {
                // Remember the stamp, so a broken pair is reported once, not every second.
                guard.0 = now;
                Err(e)
            }
        }
    }

    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "tls: new certificate in service")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "tls: the changed files do not load; the previous certificate stays in service")
                }
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(guard.1.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |problem: String| TlsError::Cert {
        path: cert_path.display().to_string(),
        problem,
    };
    let key_err = |problem: String| TlsError::Key {
        path: key_path.display().to_string(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}
