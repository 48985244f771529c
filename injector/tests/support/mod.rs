//! The webhook as a real process, a certificate made by `openssl`, and an HTTPS client that
//! trusts it: what the API server does, without the API server.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

/// Two free ports, distinct: both are held while the second is picked (one released before
/// the next bind may be handed out again).
pub fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("a bound port").port();
    (port(&a), port(&b))
}

/// A CA and a serving certificate it signed for `localhost` and 127.0.0.1 (what cert-manager's
/// CA issuer makes): the leaf in `cert` and `key`, the CA in `cert` with the extension `.ca`.
pub fn make_cert(cert: &Path, key: &Path, cn: &str) {
    let ca = cert.with_extension("ca");
    let ca_key = cert.with_extension("ca-key");
    let csr = cert.with_extension("csr");
    let ext = cert.with_extension("ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("extensions file");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2"])
            .args(["-subj", &format!("/CN={cn} CA")])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    openssl(
        Command::new("openssl")
            .args(["req", "-new"])
            .args(ec)
            .args(["-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&csr),
    );
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(cert),
    );
}

fn openssl(cmd: &mut Command) {
    let out = cmd.output().expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA that signed `cert` (see `make_cert`).
pub fn ca(cert: &Path) -> CertificateDer<'static> {
    der(&cert.with_extension("ca"))
}

pub fn der(cert: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert).expect("a PEM certificate")
}

pub struct Injector {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
}

impl Injector {
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Without a Kubernetes API: namespace annotations are not applied.
    pub fn start() -> Injector {
        Self::start_with(&[("REPRISE_KUBE", "false".to_owned())])
    }

    pub fn start_with(env: &[(&str, String)]) -> Injector {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        make_cert(&cert, &key, "first");
        let (port, metrics_port) = free_ports();
        let config = dir.path().join("injector.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ntls_cert: {}\ntls_key: {}\nsidecar_image: reprise:test\n",
                cert.display(),
                key.display()
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_reprise-injector"))
            .arg("--config")
            .arg(&config)
            .env(
                "REPRISE_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn reprise-injector");
        let mut injector = Injector {
            child,
            port,
            metrics_port,
            dir,
        };
        injector.wait_ready();
        injector
    }

    /// Until `/readyz` answers 200; an injector that exits first fails at once (its stderr is
    /// the test's).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.admin("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("reprise-injector exited before it was ready: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("reprise-injector not ready within 20 s");
    }

    /// GET on the admin port (plain HTTP/1.0, so the answer ends with the connection).
    pub fn admin(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((code, body))
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("reprise-injector did not exit within 20 s of SIGTERM");
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS connection, as the API server opens it: the server's certificate must chain to
/// one of `roots`.
pub struct Client {
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub peer_cert: CertificateDer<'static>,
}

/// A TLS connection without an HTTP client on it, for requests no well-behaved client sends.
pub async fn tls(
    port: u16,
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_alpn(port, roots, Vec::new()).await
}

pub async fn tls_alpn(
    port: u16,
    roots: &[CertificateDer<'static>],
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// Writes `head` then `body_chunks` chunks of 64 KiB (write errors ignored: the server may close
/// early) while reading the response's status code.
pub async fn raw_status(
    port: u16,
    roots: &[CertificateDer<'static>],
    head: &str,
    body_chunks: usize,
    chunked: bool,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tls(port, roots).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let head = head.to_owned();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..body_chunks {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk).await?;
            }
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = rd.read(&mut byte).await?;
        anyhow::ensure!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&byte[..n]);
    }
    writer.abort();
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split(' ').nth(1).unwrap_or_default().parse()?)
}

impl Client {
    pub async fn connect(port: u16, roots: &[CertificateDer<'static>]) -> anyhow::Result<Client> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no peer certificate"))?
            .clone()
            .into_owned();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Client { sender, peer_cert })
    }

    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Bytes)> {
        let req = http::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// An AdmissionReview as the API server sends it for a Deployment's pod: `generateName`, no
/// `name`, the namespace only in `request.namespace`.
pub fn review(uid: &str, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "4e1c7f0a-1c43-4b7e-a7d5-3c2f1d1f6a10",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "generateName": "users-client-6d8f9c7b5-",
                    "creationTimestamp": null,
                    "labels": {"app": "users-client", "pod-template-hash": "6d8f9c7b5"},
                    "annotations": annotations,
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "users-client-6d8f9c7b5",
                        "uid": "b0c7d1e2-7f3a-4c55-9d1e-0a2b3c4d5e6f", "controller": true, "blockOwnerDeletion": true
                    }],
                    "managedFields": [{
                        "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                        "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:generateName": {}}}
                    }]
                },
                "spec": {
                    "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
                    "containers": [{
                        "name": "app",
                        "image": "users-client:1.4",
                        "env": [{"name": "USERS_ADDR", "value": "http://users:50051"}],
                        "resources": {},
                        "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default",
                    "serviceAccount": "default",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                    "tolerations": [
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                    ],
                    "priority": 0,
                    "enableServiceLinks": true,
                    "preemptionPolicy": "PreemptLowerPriority"
                },
                "status": {}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A Kubernetes API server that knows namespaces and nothing else: `GET
/// /api/v1/namespaces/{name}` answers the Namespace with `annotations`, or a 404 Status as the
/// real one does. Returns its port and the number of namespace reads it has answered.
pub async fn fake_api(
    namespaces: std::collections::BTreeMap<String, serde_json::Value>,
) -> anyhow::Result<(u16, Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let reads = Arc::new(AtomicUsize::new(0));
    let (namespaces, counter) = (Arc::new(namespaces), reads.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (namespaces, counter) = (namespaces.clone(), counter.clone());
            let service = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    let name = path
                        .strip_prefix("/api/v1/namespaces/")
                        .unwrap_or_default()
                        .to_owned();
                    let found = namespaces.get(&name).cloned();
                    if !name.is_empty() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, body) = match found {
                        Some(annotations) => (
                            200,
                            serde_json::json!({
                                "kind": "Namespace", "apiVersion": "v1",
                                "metadata": {"name": name, "uid": "3c3c2c4e-1f0e-4a57-9b7b-5d2a8f0b6a11", "resourceVersion": "41",
                                    "labels": {"kubernetes.io/metadata.name": name}, "annotations": annotations},
                                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
                            }),
                        ),
                        None => (
                            404,
                            serde_json::json!({
                                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": format!("namespaces \"{name}\" not found"), "reason": "NotFound",
                                "details": {"name": name, "kind": "namespaces"}, "code": 404
                            }),
                        ),
                    };
                    let res = http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())));
                    async move { res }
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((port, reads))
}

/// A kubeconfig pointing at `port` on loopback, without credentials.
pub fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .expect("kubeconfig");
    path
}

/// `review` for a pod in `namespace`.
pub fn review_in(namespace: &str, uid: &str, annotations: serde_json::Value) -> serde_json::Value {
    let mut r = review(uid, annotations);
    r["request"]["namespace"] = serde_json::Value::String(namespace.to_owned());
    r
}
