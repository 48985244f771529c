//! The configuration every binary reads the same way: `--config FILE` (YAML, a
//! mapping of keys) with each key overridable by an environment variable `REPRISE_<KEY>` (upper
//! case), whose value is read as YAML too (`REPRISE_NAMESPACES='[a, b]'`). Unknown keys are
//! errors naming the valid ones; each binary validates its values and exits 2 on any error.

use std::{collections::BTreeMap, path::Path};

use serde_yaml::Value;

/// The text of `--config FILE`; no file: empty, every key at its default.
pub fn read(path: Option<&Path>) -> Result<String, Vec<String>> {
    match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| vec![format!("config file {}: {e}", p.display())]),
        None => Ok(String::new()),
    }
}

/// What [`values`] read: each key's value, and the errors found so far.
#[derive(Debug)]
pub struct Values {
    pub values: BTreeMap<String, Value>,
    /// Unknown keys, a top level that is not a mapping: each binary adds its own.
    pub errors: Vec<String>,
}

/// The values of `keys` in `text`, then each `REPRISE_<KEY>` of `env` over them. `Err` when the
/// text is not YAML at all: nothing else can be checked.
pub fn values(
    text: &str,
    env: &BTreeMap<String, String>,
    keys: &[&str],
) -> Result<Values, Vec<String>> {
    let mut errors = Vec::new();
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    if !text.trim().is_empty() {
        match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Mapping(m)) => {
                for (k, v) in m {
                    let Some(key) = k.as_str().map(str::to_owned) else {
                        errors.push(format!("config: key {k:?} is not a string"));
                        continue;
                    };
                    if keys.contains(&key.as_str()) {
                        map.insert(key, v);
                    } else {
                        errors.push(format!(
                            "unknown key `{key}`; valid keys: {}",
                            keys.join(", ")
                        ));
                    }
                }
            }
            Ok(Value::Null) => {}
            Ok(_) => errors.push("config: the top level must be a mapping of keys".into()),
            Err(e) => return Err(vec![format!("config: {e}")]),
        }
    }
    for key in keys {
        if let Some(raw) = env.get(&format!("REPRISE_{}", key.to_uppercase())) {
            let v = serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
            map.insert((*key).to_owned(), v);
        }
    }
    Ok(Values {
        values: map,
        errors,
    })
}

/// A scalar value as text (strings, numbers, booleans); `None` for anything else.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether Kubernetes is configured the standard way: `KUBECONFIG`, an in-cluster service
/// account, or `~/.kube/config` (the default of the binaries' `kube` key).
pub fn kube_configured() -> bool {
    std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".kube/config").exists())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_the_file_and_unknown_keys_are_named() {
        let env = BTreeMap::from([
            ("REPRISE_LISTEN".to_owned(), "0.0.0.0:1".to_owned()),
            ("REPRISE_NAMESPACES".to_owned(), "[a, b]".to_owned()),
        ]);
        let Values {
            values: map,
            errors,
        } = values(
            "listen: 127.0.0.1:2\ncolour: blue\n",
            &env,
            &["listen", "namespaces"],
        )
        .expect("yaml");
        assert_eq!(scalar(&map["listen"]).as_deref(), Some("0.0.0.0:1"));
        assert!(map["namespaces"].is_sequence());
        assert_eq!(
            errors,
            ["unknown key `colour`; valid keys: listen, namespaces"]
        );
        assert_eq!(
            values("- a\n", &BTreeMap::new(), &["listen"])
                .expect("yaml")
                .errors,
            ["config: the top level must be a mapping of keys"]
        );
        assert!(values("a: [", &BTreeMap::new(), &["a"]).is_err());
    }
}
