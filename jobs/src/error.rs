//! What can go wrong in a job store.

use crate::JobStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The first connection could not be made. `url` has its password masked.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis {op} failed: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// A stored job does not parse: someone else wrote its hash, or a schema drifted.
    #[error("job {job_id}: field `{field}` is invalid: {problem}")]
    Corrupt {
        job_id: String,
        field: &'static str,
        problem: String,
    },
    /// A script answered in a shape this code does not know (a version skew between pods).
    #[error("unexpected reply from the `{script}` script: {detail}")]
    Protocol {
        script: &'static str,
        detail: String,
    },
    #[error("cannot finish job {job_id} with status {status}: a job can only leave `running`")]
    InvalidFinish { job_id: String, status: JobStatus },
}

impl StoreError {
    pub(crate) fn redis(op: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| StoreError::Redis { op, source }
    }

    /// True when the store could not be reached (as opposed to answering something wrong):
    /// the caller may fall back to another store and try again later.
    pub fn is_unavailable(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        let source = match self {
            StoreError::Connect { .. } => return true,
            StoreError::Redis { source, .. } => source,
            _ => return false,
        };
        source.is_io_error()
            || source.is_timeout()
            || source.is_connection_dropped()
            || source.is_connection_refusal()
            || matches!(
                source.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::ReadOnly
                )
            )
    }
}

/// `url` with its password replaced by `***`, fit for logs and error messages.
///
/// Covers `redis://user:pass@host`, `redis://:pass@host` and the `?password=`/`?pass=` query
/// parameters that unix-socket URLs use.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
                    // A user name alone is no secret.
                    None => base.to_owned(),
                },
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name == "password" || name == "pass" => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("redis://user:s3cret@redis:6379/0"),
            "redis://user:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@redis.example"),
            "rediss://:***@redis.example"
        );
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://host/2",
            "redis://alice@host",
            "not a url",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
