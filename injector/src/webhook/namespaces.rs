//! The namespace annotations a pod inherits (`reprise.dev/inject` on its namespace), read
//! through the Kubernetes API with a short cache: the API server waits for this webhook while it
//! creates a pod, so a namespace is fetched at most once per `ttl`, and a lookup that fails or
//! takes longer than `LOOKUP_TIMEOUT` falls back to the last value seen (else to none: the pod's
//! own annotations decide).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

/// Well inside the webhook's `timeoutSeconds` (3 s), leaving the rest for the review itself.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

type Annotations = BTreeMap<String, String>;

pub struct Namespaces {
    api: Api<Namespace>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Annotations>)>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Cache,
    Api,
    /// The API failed; the value is the last one seen, or none.
    Stale,
}

impl Namespaces {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Namespaces {
            api: Api::all(client),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn annotations(&self, name: &str) -> (Option<Annotations>, Source) {
        let cached = self.lock().get(name).cloned();
        if let Some((at, value)) = &cached
            && at.elapsed() < self.ttl
        {
            return (value.clone(), Source::Cache);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.api.get_opt(name)).await {
            Ok(Ok(namespace)) => {
                let value = namespace.and_then(|n| n.metadata.annotations);
                self.lock()
                    .insert(name.to_owned(), (Instant::now(), value.clone()));
                (value, Source::Api)
            }
            Ok(Err(e)) => {
                tracing::warn!(namespace = %name, error = %e, "namespace lookup failed; using the last value seen");
                (cached.and_then(|(_, v)| v), Source::Stale)
            }
            Err(_) => {
                tracing::warn!(namespace = %name, "namespace lookup timed out; using the last value seen");
                (cached.and_then(|(_, v)| v), Source::Stale)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Annotations>)>> {
        match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
