//! Label selectors, as the API server parses and applies them, plus the namespace scope of a
//! request.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// Namespace scope plus a parsed label selector.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) selector: Vec<Requirement>,
}

#[derive(Clone, Debug)]
pub(crate) enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    pub(crate) fn matches(&self, pod: &Pod) -> bool {
        if let Some(ns) = &self.namespace
            && pod.metadata.namespace.as_deref() != Some(ns)
        {
            return false;
        }
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        self.selector.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Parses the label selector syntax the API server accepts: `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
pub(crate) fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'));
        let inner = inner.ok_or_else(|| format!("expected a (set) in {s:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut out = Vec::new();
    for term in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let req = if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), set(rest)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), set(rest)?)
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            Requirement::Exists(term.to_owned())
        } else {
            return Err(format!("unable to parse requirement {term:?}"));
        };
        out.push(req);
    }
    Ok(out)
}
