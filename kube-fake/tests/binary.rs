//! `reprise-fake-apiserver` as a process, as a demo script or a soak program runs it: the ready
//! line, pods written with plain HTTP requests (what curl sends), the kubeconfig a kube client
//! loads, SIGTERM → exit 0, and a bad flag → exit 2.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_reprise-fake-apiserver");
const WAIT: Duration = Duration::from_secs(20);

/// The running binary; killed on drop if the test did not stop it.
struct FakeProcess {
    child: Child,
    addr: SocketAddr,
}

impl FakeProcess {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn reprise-fake-apiserver");
        let stdout = child.stdout.take().expect("stdout");
        // The ready line, read on a thread so that a binary that never prints fails the test
        // at the deadline instead of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            lines.for_each(drop);
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("no `listening on` line within {WAIT:?}: {other:?}");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a ready line: {line:?}"));
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("kill(2)");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {WAIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request, as curl sends it, with a JSON body if any: the status code and
/// the JSON answer.
async fn request(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let res = client.request(req).await.expect("a response");
    let code = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&bytes).expect("JSON"))
}

async fn kube_client(kubeconfig: &Path) -> kube::Client {
    // What `kube::Client::try_default` does with KUBECONFIG set, as in reprise-recoverer.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config from the kubeconfig");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn pods_written_with_plain_http_and_a_clean_exit_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let kubeconfig_arg = kubeconfig.to_str().expect("a UTF-8 temp path");
    let mut fake = FakeProcess::spawn(&["--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig_arg]);
    assert_ne!(fake.addr.port(), 0);

    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "web-1", "labels": { "reprise.dev/injected": "true" } },
        "spec": { "containers": [{ "name": "reprise-sidecar", "image": "reprise/sidecar:1" }] }
    });
    let pods = fake.url("/api/v1/namespaces/demo/pods");
    let (code, created) = request("POST", &pods, Some(&pod)).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["namespace"], "demo");
    assert_eq!(created["metadata"]["resourceVersion"], "1");

    let (code, again) = request("POST", &pods, Some(&pod)).await;
    assert_eq!(
        (code, again["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );

    let (code, got) = request("GET", &format!("{pods}/web-1"), None).await;
    assert_eq!(code, 200);
    assert_eq!(got, created);

    // The kubeconfig points a kube client at the same server.
    let api: Api<Pod> = Api::namespaced(kube_client(&kubeconfig).await, "demo");
    let listed = api.list(&Default::default()).await.expect("list");
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, [Some("web-1".to_owned())]);

    fake.signal(rustix::process::Signal::TERM);
    let status = fake.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigint_exits_0_too() {
    let mut fake = FakeProcess::spawn(&[]);
    assert_eq!(
        fake.addr.ip().to_string(),
        "127.0.0.1",
        "the default --listen"
    );
    fake.signal(rustix::process::Signal::INT);
    assert_eq!(fake.wait_exit().code(), Some(0));
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let unwritable = dir.path().join("no-such-dir").join("kubeconfig");
    let unwritable = unwritable.to_str().expect("a UTF-8 temp path");
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", "localhost:http"], "--listen"),
        (&["--listen", &taken], "--listen"),
        (&["--kubeconfig", unwritable], "--kubeconfig"),
        (&["--port", "8080"], "--port"),
    ];
    for (args, flag) in cases {
        let out = Command::new(BIN).args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} names {flag}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: not ready, no ready line");
    }
}
