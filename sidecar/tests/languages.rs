//! Every demo client (Go, Node, Python, Rust) against every demo server (Rust, Go), through
//! the sidecar, none of them knowing about Reprise: the upstream is SIGKILLed three times
//! mid-stream and restarted, and the client must get every user exactly once, in order, with
//! its request metadata echoed back through the sidecar. The control: the same client straight
//! to a server that crashes mid-stream gets an error and a partial result, so the exact stream
//! above is the sidecar's work, not the client's.

use std::time::Duration;

use crate::support::*;

const USERS: usize = 6000;
const KILLS: usize = 3;

fn server(w: &World, lang: Lang, args: &[&str]) -> Proc {
    let mut cmd = lang.server(w.upstream_port);
    cmd.args(args);
    let p = Proc::spawn(&format!("{}-server", lang.name()), &mut cmd, w.path());
    wait_port(w.upstream_port, Duration::from_secs(20));
    p
}

fn exact_through_the_sidecar(client: Lang, upstream: Lang) {
    let w = World::new();
    let users = USERS.to_string();
    let args = ["--users", users.as_str(), "--delay-us", "100"];
    let mut up = server(&w, upstream, &args);
    let _sidecar = w.sidecar(&w.config(true, ""));
    let record = w.path().join("ids.txt");
    let echo = format!("x-echo-lang={}", client.name());
    let mut cmd = client.users_client(w.sidecar_port);
    cmd.args(["--expect-users", &users, "--metadata", &echo, "--record"])
        .arg(&record);
    let mut app = Proc::spawn(&format!("{}-client", client.name()), &mut cmd, w.path());
    for kill in 1..=KILLS {
        wait_until(
            "client progress before a kill",
            Duration::from_secs(120),
            || lines(&record).len() >= kill * USERS / (KILLS + 1),
        );
        up.kill9();
        up = server(&w, upstream, &args);
    }
    let status = app.wait_exit(Duration::from_secs(120));
    let summary = app.summary();
    assert!(status.success(), "{summary}");
    assert_summary_exact(&summary, USERS as u64);
    assert_eq!(
        summary["headers"]["x-echo-lang"],
        client.name(),
        "request metadata echoed through the sidecar: {summary}"
    );
    let ids = lines(&record);
    assert_eq!(ids.len(), USERS, "the app's own record");
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "recorded in order");
    assert!(
        w.metric("reprise_resumes_total", &[]) >= KILLS as f64,
        "{}",
        w.metrics()
    );
}

/// The control: straight to a server that crashes after 1500 messages.
fn partial_without_the_sidecar(client: Lang, upstream: Lang) {
    let w = World::new();
    let users = USERS.to_string();
    let _up = server(
        &w,
        upstream,
        &[
            "--users",
            &users,
            "--delay-us",
            "50",
            "--exit-after",
            "1500",
        ],
    );
    let mut cmd = client.users_client(w.upstream_port);
    cmd.args(["--expect-users", &users]);
    let mut app = Proc::spawn(&format!("{}-direct", client.name()), &mut cmd, w.path());
    let status = app.wait_exit(Duration::from_secs(60));
    let summary = app.summary();
    assert_eq!(status.code(), Some(1), "{summary}");
    assert_eq!(summary["ok"], false, "{summary}");
    assert_ne!(summary["status"], "OK", "{summary}");
    let received = summary["received"].as_u64().expect("received");
    assert!(received <= 1500, "{summary}");
    assert_eq!(
        summary["missing"].as_u64(),
        Some(USERS as u64 - received),
        "{summary}"
    );
}

macro_rules! matrix {
    ($($name:ident: $client:ident x $server:ident;)*) => {
        $(
            #[test]
            fn $name() {
                exact_through_the_sidecar(Lang::$client, Lang::$server);
                partial_without_the_sidecar(Lang::$client, Lang::$server);
            }
        )*
    };
}

matrix! {
    go_client_x_rust_server: Go x Rust;
    go_client_x_go_server: Go x Go;
    node_client_x_rust_server: Node x Rust;
    node_client_x_go_server: Node x Go;
    python_client_x_rust_server: Python x Rust;
    python_client_x_go_server: Python x Go;
    rust_client_x_rust_server: Rust x Rust;
    rust_client_x_go_server: Rust x Go;
}
