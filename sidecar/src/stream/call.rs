//! The app's call as a stream task takes it: the one request message read (and gunzipped)
//! within `max_message_bytes`, its deadline, the job id it names or implies, and the headers
//! to send upstream on every attempt.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prost_reflect::DynamicMessage;
use tokio::time::Instant;

use super::{JOB_ID_HEADER, Reply, reject};
use crate::{
    descriptors::ResumableMethod,
    grpc::{self, Deframer, Messages, code},
    listen::AppConnection,
    request,
    upstream::strip_hop_by_hop,
};

/// One resumable call of the app, read and checked; what every attempt re-sends.
pub(crate) struct Call {
    /// The request message exactly as the app sent it (decompressed).
    pub original: Bytes,
    /// The same, decoded: the job id and the app's own resume value come from it.
    pub request: DynamicMessage,
    /// The app's headers as the upstream gets them: no hop-by-hop headers, no
    /// `grpc-timeout` (each attempt sends what is left), identity encoding asked for.
    pub headers: HeaderMap,
    /// From the app's `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// The job id the app named (`x-reprise-job-id`) or the one its request implies.
    pub base_id: String,
    /// The app's connection (`None`: not from the app's listener).
    pub app_connection: Option<AppConnection>,
}

impl Call {
    /// Reads the app's request; a request the sidecar cannot serve is answered at once.
    pub async fn read(
        service: &str,
        method: &ResumableMethod,
        max_message_bytes: usize,
        req: Request<Incoming>,
    ) -> Result<Call, Reply> {
        let (mut parts, body) = req.into_parts();
        let deadline = parts
            .headers
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .map(|d| Instant::now() + d);
        let original = read_request(&parts.headers, body, max_message_bytes).await?;
        let request = request::decode(method, &original)
            .map_err(|e| reject(code::INVALID_ARGUMENT, format!("reprise: {e}")))?;
        let base_id = match parts.headers.get(JOB_ID_HEADER) {
            Some(v) => valid_job_id(v).ok_or_else(|| {
                reject(
                    code::INVALID_ARGUMENT,
                    format!(
                        "reprise: {JOB_ID_HEADER} must be 1-128 characters of A-Z a-z 0-9 . _ : -"
                    ),
                )
            })?,
            None => request::job_id(service, method, &request),
        };
        upstream_headers(&mut parts.headers);
        Ok(Call {
            original,
            request,
            headers: parts.headers,
            deadline,
            base_id,
            app_connection: parts.extensions.get::<AppConnection>().cloned(),
        })
    }
}

/// The app's headers made fit for every upstream attempt.
fn upstream_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for h in [
        header::CONTENT_LENGTH.as_str(),
        grpc::GRPC_TIMEOUT,
        "grpc-encoding",
        JOB_ID_HEADER,
    ] {
        headers.remove(h);
    }
    // Offsets must be readable: ask for uncompressed responses.
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
}

/// Reads the single request message of a server-streaming call (decompressing gzip).
async fn read_request(headers: &HeaderMap, body: Incoming, max: usize) -> Result<Bytes, Reply> {
    let collected = Limited::new(body, max + 5).collect().await.map_err(|e| {
        reject(
            code::INVALID_ARGUMENT,
            format!("reprise: cannot read the request (max_message_bytes {max}): {e}"),
        )
    })?;
    let bytes = collected.to_bytes();
    let mut deframer = Deframer::new(max);
    let [_, whole] = deframer.push(bytes).map_err(|e| {
        reject(
            code::INVALID_ARGUMENT,
            format!("reprise: bad request frame: {e}"),
        )
    })?;
    let mut msgs: Vec<(bool, Bytes)> = Messages::new(whole).collect();
    if deframer.pending() > 0 {
        return Err(reject(
            code::INVALID_ARGUMENT,
            format!(
                "reprise: the request ended inside a message frame ({} bytes of an unfinished frame, its header included, after {} whole message(s))",
                deframer.pending(),
                msgs.len()
            ),
        ));
    }
    if msgs.len() != 1 {
        return Err(reject(
            code::INVALID_ARGUMENT,
            format!(
                "reprise: a server-streaming call carries exactly one request message, got {}",
                msgs.len()
            ),
        ));
    }
    let (compressed, message) = msgs.remove(0);
    if !compressed {
        return Ok(message);
    }
    match headers.get("grpc-encoding").map(HeaderValue::as_bytes) {
        Some(b"gzip") => match grpc::gunzip(&message, max) {
            Ok(plain) => Ok(plain.into()),
            Err(grpc::GunzipError::TooLarge { .. }) => Err(reject(
                code::INVALID_ARGUMENT,
                format!("reprise: request exceeds max_message_bytes ({max})"),
            )),
            Err(e @ grpc::GunzipError::Corrupt(_)) => Err(reject(
                code::INVALID_ARGUMENT,
                format!("reprise: cannot gunzip the request: {e}"),
            )),
        },
        // The gRPC spec: a compressed message without an encoding is a protocol error.
        None | Some(b"identity") => Err(reject(
            code::INTERNAL,
            "reprise: the request message is flagged compressed but the call declares no grpc-encoding".into(),
        )),
        other => Err(reject(
            code::UNIMPLEMENTED,
            format!(
                "reprise: request compression {:?} is not supported on resumable methods; valid: identity, gzip",
                other.map(String::from_utf8_lossy).unwrap_or_default()
            ),
        )),
    }
}

fn valid_job_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    ok.then(|| s.to_owned())
}

/// A second live call of the same logical request gets its own job (never a shared offset).
pub(super) fn independent_id(base: &str) -> String {
    format!("{base}-{:08x}", rand::random::<u32>())
}

pub(super) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_header_is_validated() {
        assert_eq!(
            valid_job_id(&HeaderValue::from_static("nightly-export:2026.11")),
            Some("nightly-export:2026.11".into())
        );
        assert_eq!(valid_job_id(&HeaderValue::from_static("has space")), None);
        assert_eq!(valid_job_id(&HeaderValue::from_static("")), None);
    }
}
