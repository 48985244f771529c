//! `get`: one GetUser call, reported with everything the response carried.

use std::collections::BTreeMap;
use std::time::Instant;

use prost::Message as _;
use reprise_proto::demo::v1::GetUserRequest;
use reprise_proto::demo::v1::user_service_client::UserServiceClient;
use serde::{Deserialize, Serialize};

use super::{Connection, code_name, metadata_json};
use crate::RpcStatus;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserJson {
    pub user_id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub created_at: i64,
}

/// The outcome of `get`. `metadata` is what the response carried (headers and trailers
/// together; a failed unary call's metadata arrive with its status). `details` is the
/// `grpc-status-details-bin` payload as hex, `details_status` its decoding as a
/// `google.rpc.Status`. `ok` is true iff the call returned OK.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetReport {
    pub kind: String,
    pub status: String,
    pub message: String,
    pub user: Option<UserJson>,
    pub details: String,
    pub details_status: Option<DetailsJson>,
    pub metadata: BTreeMap<String, String>,
    pub elapsed_ms: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetailsJson {
    pub code: i32,
    pub message: String,
}

impl GetReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}

pub async fn get_user(conn: &Connection, id: &str) -> GetReport {
    let started = Instant::now();
    let request = GetUserRequest {
        user_id: id.to_owned(),
    };
    let outcome = conn
        .within_deadline(async {
            let mut client = UserServiceClient::new(conn.channel());
            client.get_user(conn.request(request)).await
        })
        .await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(response) => {
            let metadata = metadata_json(response.metadata());
            let user = response.into_inner();
            GetReport {
                kind: "get".to_owned(),
                status: "OK".to_owned(),
                message: String::new(),
                user: Some(UserJson {
                    user_id: user.user_id,
                    name: user.name,
                    email: user.email,
                    role: user.role,
                    created_at: user.created_at,
                }),
                details: String::new(),
                details_status: None,
                metadata,
                elapsed_ms,
                ok: true,
            }
        }
        Err(status) => GetReport {
            kind: "get".to_owned(),
            status: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            user: None,
            details: hex::encode(status.details()),
            details_status: (!status.details().is_empty())
                .then(|| RpcStatus::decode(status.details()).ok())
                .flatten()
                .map(|s| DetailsJson {
                    code: s.code,
                    message: s.message,
                }),
            metadata: metadata_json(status.metadata()),
            elapsed_ms,
            ok: false,
        },
    }
}
