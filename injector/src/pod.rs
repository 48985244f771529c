//! The patch itself: the sidecar container, its volume, the app's target variables, the grace
//! period, the label and the scrape annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations as a;
use crate::options::{Options, host_port};
use crate::{
    CONFIG_DIR, CONFIG_VOLUME, CONTAINER_NAME, DEFAULT_GRACE_SECONDS, GRACE_MARGIN_SECONDS,
    InjectError,
};

const ADMIN_PORT_NAME: &str = "reprise-metrics";
const SIDECAR_BINARY: &str = "/usr/local/bin/reprise-sidecar";

/// The label, or a container of ours, already there: injecting again changes nothing.
pub fn is_injected(metadata: &ObjectMeta, spec: &PodSpec) -> bool {
    let labelled = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(a::INJECTED_LABEL))
        .is_some_and(|v| v == "true");
    labelled || all_containers(spec).any(|c| c.name == CONTAINER_NAME)
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

pub fn patch(
    metadata: &ObjectMeta,
    spec: &PodSpec,
    options: &Options,
) -> Result<(ObjectMeta, PodSpec), InjectError> {
    check_ports(spec, options)?;
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == CONFIG_VOLUME)
    {
        return Err(InjectError::new(
            a::CONFIG,
            format!("the pod already has a volume named `{CONFIG_VOLUME}`"),
            "a pod without a volume of that name",
        ));
    }
    let mut spec = spec.clone();
    let mut metadata = metadata.clone();

    let target_upstream = point_targets_at_sidecar(&mut spec, options)?;
    let upstream = options.upstream.clone().or(target_upstream);
    let sidecar = container(options, upstream);
    if options.native_sidecar {
        // First among the init containers: the later ones (and the app) may need the proxy.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        spec.containers.push(sidecar);
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CONFIG_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: options.config_map.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });

    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(a::INJECTED_LABEL.to_owned(), "true".to_owned());
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    // An app that already tells Prometheus where its own metrics are keeps that.
    if !annotations.contains_key(a::PROMETHEUS_SCRAPE) {
        annotations.insert(a::PROMETHEUS_SCRAPE.to_owned(), "true".to_owned());
        annotations.insert(
            a::PROMETHEUS_PORT.to_owned(),
            options.admin_port.to_string(),
        );
        annotations.insert(a::PROMETHEUS_PATH.to_owned(), "/metrics".to_owned());
    }

    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let needed = seconds_up(options.shutdown_timeout) + GRACE_MARGIN_SECONDS;
    if grace < needed {
        spec.termination_grace_period_seconds = Some(needed);
        annotations.insert(
            a::TERMINATION_GRACE_RAISED.to_owned(),
            format!("{grace} -> {needed}"),
        );
    }
    Ok((metadata, spec))
}

fn seconds_up(d: std::time::Duration) -> i64 {
    let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    if d.subsec_nanos() > 0 {
        whole + 1
    } else {
        whole
    }
}

fn check_ports(spec: &PodSpec, options: &Options) -> Result<(), InjectError> {
    for c in all_containers(spec) {
        for p in c.ports.iter().flatten() {
            for (port, key) in [
                (options.proxy_port, a::PROXY_PORT),
                (options.admin_port, a::ADMIN_PORT),
            ] {
                if p.container_port == i32::from(port) {
                    return Err(InjectError::new(
                        key,
                        format!("container `{}` already uses port {port}", c.name),
                        "a port no container of the pod uses",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The containers that can reach the sidecar: the init containers only when the sidecar is
/// native (it starts before them).
fn app_containers(spec: &PodSpec, native: bool) -> impl Iterator<Item = &Container> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .filter(move |_| native);
    init.chain(spec.containers.iter())
}

/// Points each `reprise.dev/target-env` variable at the sidecar; returns the upstream their old
/// value named.
fn point_targets_at_sidecar(
    spec: &mut PodSpec,
    options: &Options,
) -> Result<Option<String>, InjectError> {
    let mut upstream: Option<(String, String)> = None;
    for name in &options.target_env {
        let mut old: Option<String> = None;
        for c in app_containers(spec, options.native_sidecar) {
            for var in c.env.iter().flatten().filter(|v| &v.name == name) {
                if var.value_from.is_some() {
                    return Err(InjectError::new(
                        a::TARGET_ENV,
                        format!("`{name}` in container `{}` is set with valueFrom", c.name),
                        "variables with a literal value",
                    ));
                }
                let value = var.value.clone().unwrap_or_default();
                match &old {
                    Some(o) if *o != value => {
                        return Err(InjectError::new(
                            a::TARGET_ENV,
                            format!("`{name}` differs between containers (`{o}`, `{value}`)"),
                            "variables with the same value in every container",
                        ));
                    }
                    _ => old = Some(value),
                }
            }
        }
        let Some(old) = old else {
            return Err(InjectError::new(
                a::TARGET_ENV,
                format!("no container sets `{name}`"),
                "names of variables the app's containers set",
            ));
        };
        let (new, target) = retarget(&old, options.proxy_port).ok_or_else(|| {
            InjectError::new(
                a::TARGET_ENV,
                format!("`{name}` is `{old}`, not a gRPC target"),
                "values of the form host:port, http://host:port, https://host:port, dns:///host:port",
            )
        })?;
        if options.upstream.is_none() {
            match &upstream {
                Some((first, other)) if *other != target => {
                    return Err(InjectError::new(
                        a::TARGET_ENV,
                        format!(
                            "`{first}` and `{name}` name different upstreams (`{other}`, `{target}`)"
                        ),
                        "variables naming one upstream, or set reprise.dev/upstream",
                    ));
                }
                Some(_) => {}
                None => upstream = Some((name.clone(), target)),
            }
        }
        // Init containers run after a native sidecar has started, before a classic one exists.
        let native = options.native_sidecar;
        let init = spec.init_containers.iter_mut().flatten().filter(|_| native);
        let containers = init.chain(spec.containers.iter_mut());
        for var in containers.flat_map(|c| c.env.iter_mut().flatten()) {
            if &var.name == name {
                var.value = Some(new.clone());
            }
        }
    }
    Ok(upstream.map(|(_, u)| u))
}

/// The value pointed at the sidecar, in the old one's form, and the upstream the old one named.
pub(crate) fn retarget(old: &str, port: u16) -> Option<(String, String)> {
    let local = format!("127.0.0.1:{port}");
    if let Some(authority) = old.strip_prefix("dns:///") {
        return host_port(authority)
            .then(|| (format!("dns:///{local}"), format!("http://{authority}")));
    }
    for scheme in ["http", "https"] {
        if let Some(rest) = old.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            // The app now talks to the sidecar in plaintext on loopback, whatever it used before;
            // the sidecar keeps TLS towards an https upstream.
            return host_port(authority).then(|| {
                (
                    format!("http://{local}{path}"),
                    format!("{scheme}://{authority}"),
                )
            });
        }
    }
    host_port(old).then(|| (local, format!("http://{old}")))
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, timeout: Option<i32>, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: timeout,
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn container(options: &Options, upstream: Option<String>) -> Container {
    // The pod as the recoverer knows it: jobs record owner_pod, owner_namespace and owner_uid.
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_UID", "metadata.uid"),
    ];
    if let Some(service) = &options.service {
        env.push(value_env("REPRISE_SERVICE", service));
    }
    if let Some(upstream) = upstream {
        env.push(value_env("REPRISE_UPSTREAM", upstream));
    }
    if let Some(secret) = &options.amqp_secret {
        env.push(EnvVar {
            name: "REPRISE_AMQP_URL".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: "url".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env.push(value_env("RUST_LOG", options.log_level.clone()));
    if options.proxy_port_set {
        env.push(value_env(
            "REPRISE_LISTEN",
            format!("127.0.0.1:{}", options.proxy_port),
        ));
    }
    if options.admin_port_set {
        // The kubelet probes the pod IP, not loopback.
        env.push(value_env(
            "REPRISE_METRICS_LISTEN",
            format!("0.0.0.0:{}", options.admin_port),
        ));
    }
    if let Some(timeout) = &options.shutdown_timeout_set {
        env.push(value_env("REPRISE_SHUTDOWN_TIMEOUT", timeout.clone()));
    }
    if let Some(drain) = &options.drain_period {
        env.push(value_env("REPRISE_DRAIN_PERIOD", drain.clone()));
    }
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    Container {
        name: CONTAINER_NAME.to_owned(),
        restart_policy: options.native_sidecar.then(|| "Always".to_owned()),
        image: Some(options.image.clone()),
        image_pull_policy: options.image_pull_policy.clone(),
        command: Some(vec![SIDECAR_BINARY.to_owned()]),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/sidecar.yaml"),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(options.admin_port),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // A native sidecar gates the app's start on this: /healthz answers once the listener is
        // bound, so the app's first call finds it.
        startup_probe: options
            .native_sidecar
            .then(|| http_probe("/healthz", 1, None, 60)),
        liveness_probe: Some(http_probe("/healthz", 10, Some(2), 3)),
        readiness_probe: Some(http_probe("/readyz", 5, Some(2), 2)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&options.cpu_request, &options.memory_request)),
            limits: Some(quantities(&options.cpu_limit, &options.memory_limit)),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::retarget;

    #[test]
    fn targets_keep_their_form() {
        let cases = [
            ("users:50051", "127.0.0.1:15001", "http://users:50051"),
            (
                "http://users.demo.svc:50051",
                "http://127.0.0.1:15001",
                "http://users.demo.svc:50051",
            ),
            (
                "https://users:443/",
                "http://127.0.0.1:15001/",
                "https://users:443",
            ),
            (
                "dns:///users:50051",
                "dns:///127.0.0.1:15001",
                "http://users:50051",
            ),
        ];
        for (old, new, upstream) in cases {
            assert_eq!(
                retarget(old, 15001),
                Some((new.to_owned(), upstream.to_owned())),
                "{old}"
            );
        }
        for bad in ["users", "http://users", "dns:///users", "", "unix:///tmp/s"] {
            assert_eq!(retarget(bad, 15001), None, "{bad}");
        }
    }
}
