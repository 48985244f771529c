//! `reprise-injector` as a real process over real TLS, driven with AdmissionReviews shaped like
//! the API server's: the patch it returns is applied to the pod and the result checked.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use support::{Client, Injector, ca, der, make_cert, review};

fn response(body: &[u8]) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    Ok(v["response"].clone())
}

#[tokio::test]
async fn a_deployment_pod_that_asks_is_patched() -> anyhow::Result<()> {
    let injector = Injector::start();
    let mut client = Client::connect(injector.port, &[ca(&injector.cert())]).await?;
    let uid = "0df28fbd-5f5f-11e8-bc74-36e6bb280816";
    let sent = review(uid, serde_json::json!({"reprise.dev/inject": "enabled"}));
    let (status, body) = client.post("/inject", serde_json::to_vec(&sent)?).await?;
    assert_eq!(status, 200);
    let answer = response(&body)?;
    assert_eq!(answer["uid"], uid);
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["patch"].as_str().unwrap_or_default())?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)?;

    let mut pod = sent["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch)?;
    assert_eq!(pod["metadata"]["labels"]["reprise.dev/injected"], "true");
    assert_eq!(pod["metadata"]["labels"]["app"], "users-client");
    assert_eq!(pod["metadata"]["generateName"], "users-client-6d8f9c7b5-");
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        containers[0]["name"], "app",
        "the app's container is untouched"
    );
    assert_eq!(
        containers[0],
        sent["request"]["object"]["spec"]["containers"][0]
    );
    // A native sidecar by default: the first init container, `restartPolicy: Always`.
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|init| init.first())
        .filter(|c| c["name"] == "reprise-sidecar")
        .ok_or_else(|| {
            anyhow::anyhow!("no reprise-sidecar first among the init containers of {pod}")
        })?;
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], "reprise:test");
    let pod_name = sidecar["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "POD_NAME"))
        .ok_or_else(|| anyhow::anyhow!("no POD_NAME"))?;
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Everything the API server had set is still there.
    assert_eq!(
        pod["spec"]["tolerations"],
        sent["request"]["object"]["spec"]["tolerations"]
    );
    assert_eq!(
        pod["metadata"]["managedFields"],
        sent["request"]["object"]["metadata"]["managedFields"]
    );

    // The injected pod comes back on reinvocation: allowed, no second patch.
    let mut again = sent.clone();
    again["request"]["object"] = pod;
    let (status, body) = client.post("/inject", serde_json::to_vec(&again)?).await?;
    assert_eq!(status, 200);
    let answer = response(&body)?;
    assert_eq!(answer["allowed"], true);
    assert!(answer.get("patch").is_none(), "{answer}");

    let (_, metrics) = injector
        .admin("/metrics")
        .ok_or_else(|| anyhow::anyhow!("no metrics"))?;
    assert!(
        metrics.contains("reprise_injector_pods_injected_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reprise_injector_pods_skipped_total{reason=\"already_injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reprise_injector_request_duration_seconds_count 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_that_does_not_ask_is_allowed_without_a_patch() -> anyhow::Result<()> {
    let injector = Injector::start();
    let mut client = Client::connect(injector.port, &[ca(&injector.cert())]).await?;
    for annotations in [
        serde_json::json!({}),
        serde_json::json!({"reprise.dev/inject": "disabled"}),
    ] {
        let (status, body) = client
            .post("/inject", serde_json::to_vec(&review("u-1", annotations))?)
            .await?;
        assert_eq!(status, 200);
        let answer = response(&body)?;
        assert_eq!(answer["uid"], "u-1");
        assert_eq!(answer["allowed"], true);
        assert!(answer.get("patch").is_none(), "{answer}");
    }
    Ok(())
}

#[tokio::test]
async fn an_invalid_annotation_is_denied_naming_it() -> anyhow::Result<()> {
    let injector = Injector::start();
    let mut client = Client::connect(injector.port, &[ca(&injector.cert())]).await?;
    let sent = review(
        "u-2",
        serde_json::json!({"reprise.dev/inject": "yes please"}),
    );
    let (status, body) = client.post("/inject", serde_json::to_vec(&sent)?).await?;
    assert_eq!(status, 200);
    let answer = response(&body)?;
    assert_eq!(answer["uid"], "u-2");
    assert_eq!(answer["allowed"], false);
    let message = answer["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("reprise.dev/inject"), "{answer}");
    assert!(
        message.contains("enabled"),
        "the valid values are listed: {answer}"
    );
    let (_, metrics) = injector
        .admin("/metrics")
        .ok_or_else(|| anyhow::anyhow!("no metrics"))?;
    assert!(
        metrics.contains("reprise_injector_pods_denied_total{reason=\"reprise.dev/inject\"} 1"),
        "{metrics}"
    );

    // Several invalid annotations: one denial that names each, so one edit fixes them all.
    let sent = review(
        "u-3",
        serde_json::json!({
            "reprise.dev/inject": "enabled",
            "reprise.dev/log-level": "loud",
            "reprise.dev/memory-limit": "64MB",
        }),
    );
    let (status, body) = client.post("/inject", serde_json::to_vec(&sent)?).await?;
    assert_eq!(status, 200);
    let answer = response(&body)?;
    assert_eq!(answer["allowed"], false);
    let message = answer["status"]["message"].as_str().unwrap_or_default();
    for named in ["reprise.dev/log-level", "reprise.dev/memory-limit"] {
        assert!(message.contains(named), "{named} in {answer}");
    }
    Ok(())
}

#[tokio::test]
async fn garbage_and_oversized_bodies_are_refused_and_the_server_keeps_serving()
-> anyhow::Result<()> {
    let injector = Injector::start();
    let roots = [ca(&injector.cert())];
    let mut client = Client::connect(injector.port, &roots).await?;
    for garbage in [
        &b"not json"[..],
        b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
    ] {
        let (status, _) = client.post("/inject", garbage.to_vec()).await?;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(garbage));
    }
    // Over the limit by its Content-Length: refused before the body is read.
    let head = "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3145729\r\n\r\n";
    assert_eq!(
        support::raw_status(injector.port, &roots, head, 1, false).await?,
        413
    );
    // Over the limit as it streams in (chunked, no length): refused once the limit is passed.
    let head = "POST /inject HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(
        support::raw_status(injector.port, &roots, head, 49, true).await?,
        413
    );
    // An unknown path is 404, the same connection or a new one still answers reviews.
    let (status, _) = client.post("/mutate", b"{}".to_vec()).await?;
    assert_eq!(status, 404);
    let mut fresh = Client::connect(injector.port, &roots).await?;
    let (status, _) = client
        .post(
            "/inject",
            serde_json::to_vec(&review("u-3", serde_json::json!({})))?,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, body) = fresh
        .post(
            "/inject",
            serde_json::to_vec(&review("u-4", serde_json::json!({})))?,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(response(&body)?["uid"], "u-4");
    let (_, metrics) = injector
        .admin("/metrics")
        .ok_or_else(|| anyhow::anyhow!("no metrics"))?;
    assert!(
        metrics.contains("reprise_injector_bad_requests_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reprise_injector_bad_requests_total{reason=\"not_a_review\"} 3"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_handshakes() -> anyhow::Result<()> {
    let injector = Injector::start();
    let first = der(&injector.cert());
    let staged = injector.dir.path().join("next");
    std::fs::create_dir(&staged)?;
    let (next_cert, next_key) = (staged.join("tls.crt"), staged.join("tls.key"));
    make_cert(&next_cert, &next_key, "second");
    let second = der(&next_cert);
    let second_ca = ca(&next_cert);
    let roots = [ca(&injector.cert()), second_ca.clone()];
    let mut old = Client::connect(injector.port, &roots).await?;
    assert_eq!(old.peer_cert, first);

    // Replace both files (rename: each file changes at once, as the kubelet's symlink swap does).
    std::fs::rename(&next_key, injector.key())?;
    std::fs::rename(&next_cert, injector.cert())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let client = Client::connect(injector.port, &roots).await?;
        if client.peer_cert == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still get the first certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that trusts only the new certificate is served, on a new connection.
    let mut new = Client::connect(injector.port, &[second_ca]).await?;
    let (status, _) = new
        .post(
            "/inject",
            serde_json::to_vec(&review("u-5", serde_json::json!({})))?,
        )
        .await?;
    assert_eq!(status, 200);
    // The connection made before the rotation keeps working.
    let (status, _) = old
        .post(
            "/inject",
            serde_json::to_vec(&review("u-6", serde_json::json!({})))?,
        )
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

/// A review half sent when SIGTERM arrives is still answered; then the process exits 0.
#[tokio::test]
async fn sigterm_finishes_the_review_in_flight_and_exits_0() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut injector = Injector::start();
    let body = serde_json::to_vec(&review(
        "t-1",
        serde_json::json!({"reprise.dev/inject": "enabled"}),
    ))?;
    let mut tls = support::tls(injector.port, &[ca(&injector.cert())]).await?;
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    let (first, rest) = body.split_at(body.len() / 2);
    tls.write_all(first).await?;
    tls.flush().await?;

    let pid = injector.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while injector
        .admin("/readyz")
        .is_some_and(|(code, _)| code == 200)
    {
        assert!(
            Instant::now() < deadline,
            "/readyz not 503 within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls.write_all(rest).await?;
    tls.flush().await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"uid\":\"t-1\""), "{text}");
    // The server closed the connection after that answer; the process exits 0.
    assert_eq!(injector.terminate().code(), Some(0));
    Ok(())
}

#[test]
fn bad_configuration_exits_2_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    make_cert(&cert, &key, "cfg");
    let cases = [
        (
            format!(
                "tls_cert: {}\ntls_key: {}\ncolour: red\n",
                cert.display(),
                key.display()
            ),
            "unknown key `colour`; valid keys: listen",
        ),
        (
            format!(
                "tls_cert: {}/missing.crt\ntls_key: {}\n",
                dir.path().display(),
                key.display()
            ),
            "key `tls_cert`",
        ),
        // The certificate where the key should be: the pair does not load.
        (
            format!(
                "tls_cert: {}\ntls_key: {}\n",
                cert.display(),
                cert.display()
            ),
            "key `tls_key`",
        ),
    ];
    for (yaml, needle) in cases {
        let config = dir.path().join("injector.yaml");
        std::fs::write(&config, &yaml)?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reprise-injector"))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn a_namespace_annotation_applies_to_its_pods_and_the_pod_wins() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let (api, reads) = support::fake_api(
        [
            (
                "shop".to_owned(),
                serde_json::json!({"reprise.dev/inject": "enabled"}),
            ),
            ("plain".to_owned(), serde_json::json!({"team": "payments"})),
        ]
        .into(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let injector = Injector::start_with(&[
        ("REPRISE_KUBE", "true".to_owned()),
        (
            "KUBECONFIG",
            support::kubeconfig(dir.path(), api).display().to_string(),
        ),
        ("REPRISE_NAMESPACE_CACHE_TTL", "1h".to_owned()),
    ]);
    let mut client = Client::connect(injector.port, &[ca(&injector.cert())]).await?;
    let post = |ns: &str, uid: &str, a: serde_json::Value| {
        serde_json::to_vec(&support::review_in(ns, uid, a)).unwrap_or_default()
    };

    // Not annotated itself, in an annotated namespace: injected.
    let (status, body) = client
        .post("/inject", post("shop", "n-1", serde_json::json!({})))
        .await?;
    assert_eq!(status, 200);
    let answer = response(&body)?;
    assert_eq!(answer["allowed"], true);
    assert!(answer["patch"].is_string(), "{answer}");
    // The pod's own `disabled` wins over its namespace, and needs no lookup.
    let (_, body) = client
        .post(
            "/inject",
            post(
                "shop",
                "n-2",
                serde_json::json!({"reprise.dev/inject": "disabled"}),
            ),
        )
        .await?;
    assert!(response(&body)?.get("patch").is_none());
    // A namespace without the annotation, one that does not exist: untouched.
    for ns in ["plain", "gone"] {
        let (status, body) = client
            .post("/inject", post(ns, "n-3", serde_json::json!({})))
            .await?;
        assert_eq!(status, 200);
        let answer = response(&body)?;
        assert_eq!(answer["allowed"], true);
        assert!(answer.get("patch").is_none(), "{ns}: {answer}");
    }
    // Within the cache's ttl, `shop` is not read again.
    let (_, body) = client
        .post("/inject", post("shop", "n-4", serde_json::json!({})))
        .await?;
    assert!(response(&body)?["patch"].is_string());
    assert_eq!(
        reads.load(Ordering::SeqCst),
        3,
        "shop, plain, gone: once each"
    );
    Ok(())
}

/// The API server's webhook client negotiates HTTP/2 when offered: several reviews at once on
/// one h2 connection.
#[tokio::test]
async fn reviews_over_http2() -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let injector = Injector::start();
    let tls =
        support::tls_alpn(injector.port, &[ca(&injector.cert())], vec![b"h2".to_vec()]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut sender = sender.clone();
        let body = serde_json::to_vec(&review(
            &format!("h2-{i}"),
            serde_json::json!({"reprise.dev/inject": "enabled"}),
        ))?;
        calls.push(tokio::spawn(async move {
            let req = http::Request::post("https://localhost/inject")
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body)))?;
            let res = sender.send_request(req).await?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((i, status, body))
        }));
    }
    for call in calls {
        let (i, status, body) = call.await??;
        assert_eq!(status, 200);
        let answer = response(&body)?;
        assert_eq!(answer["uid"], format!("h2-{i}"));
        assert!(answer["patch"].is_string());
    }
    Ok(())
}
