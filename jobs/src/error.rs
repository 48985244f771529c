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

/// `url` with its password replaced by `***`, fit for logs and error messages. The one
/// redactor of every binary: whatever reaches a log line or an error message goes through it.
///
/// Covers `redis://user:pass@host`, `redis://:pass@host` (also when the password holds an
/// unencoded `/`, `?`, `#` or `@`) and the `?password=`/`?pass=` query parameters that
/// unix-socket URLs use. When in doubt it masks too much rather than too little.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    // The host cannot contain `@`, so credentials end at the last one. A path-only URL
    // (`redis+unix:///run/redis.sock`) has no authority.
    let credentials = (!rest.starts_with('/'))
        .then(|| rest.rsplit_once('@'))
        .flatten();
    match credentials {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", redact_query(host)),
            // A user name alone is no secret.
            None => format!("{scheme}://{userinfo}@{}", redact_query(host)),
        },
        None => format!("{scheme}://{}", redact_query(rest)),
    }
}

/// `text` with the values of its `password`/`pass` query parameters masked.
fn redact_query(text: &str) -> String {
    let Some((base, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _))
                if name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("pass") =>
            {
                format!("{name}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
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
        assert_eq!(
            redact_url("redis://h:6379/0?password=s3cret&protocol=resp3"),
            "redis://h:6379/0?password=***&protocol=resp3"
        );
        assert_eq!(
            redact_url("foo://u:s3cret@h:6379"),
            "foo://u:***@h:6379",
            "whatever the scheme"
        );
        assert_eq!(
            redact_url("amqp://guest:s3cret@host:5672/%2f?heartbeat=10"),
            "amqp://guest:***@host:5672/%2f?heartbeat=10"
        );
    }

    #[test]
    fn passwords_with_url_delimiters_are_masked_whole() {
        for url in [
            "redis://u:s3/cret@h:6379/0",
            "redis://u:s3?cret@h:6379",
            "redis://u:s3#cret@h:6379",
            "redis://u:s3@cret@h:6379",
            "redis://u:s3cret@h:6379/0?Password=s3cret",
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains("cret"), "{url} → {redacted}");
            assert!(
                redacted.starts_with("redis://u:***@h:6379"),
                "{url} → {redacted}"
            );
        }
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
