//! `demo.v1.UserService`: the talk's "service A", streaming users in ascending id order.

use std::collections::{BTreeMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use prost::Message as _;
use reprise_proto::demo::v1::user_service_server::UserService;
use reprise_proto::demo::v1::{ChatMessage, GetUserRequest, ListUsersRequest, User};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::echo;
use super::stream::Streams;
use crate::RpcStatus;
use crate::users::start_index;

/// The payload of a panic injected with `--panic-on`, so the panic hook can tell it from a bug.
#[derive(Debug)]
pub struct InjectedPanic {
    pub user_id: String,
}

pub(crate) struct UserApi {
    db: Arc<[User]>,
    inclusive: bool,
    panic_on: Arc<HashSet<String>>,
    streams: Arc<Streams>,
}

impl UserApi {
    pub(crate) fn new(
        db: Vec<User>,
        inclusive: bool,
        panic_on: HashSet<String>,
        streams: Arc<Streams>,
    ) -> Self {
        Self {
            db: db.into(),
            inclusive,
            panic_on: Arc::new(panic_on),
            streams,
        }
    }
}

/// Produces the message for one user; a user listed in `--panic-on` panics here.
fn render(user: &User, panic_on: &HashSet<String>) -> User {
    if panic_on.contains(&user.user_id) {
        panic::panic_any(InjectedPanic {
            user_id: user.user_id.clone(),
        });
    }
    user.clone()
}

/// The talk's recovery: a panic while producing one item costs that item, not the stream.
fn render_or_skip(user: &User, panic_on: &HashSet<String>) -> Option<User> {
    match panic::catch_unwind(AssertUnwindSafe(|| render(user, panic_on))) {
        Ok(user) => Some(user),
        Err(payload) => {
            let reason = if payload.is::<InjectedPanic>() {
                "injected by --panic-on".to_owned()
            } else if let Some(text) = payload.downcast_ref::<&str>() {
                (*text).to_owned()
            } else if let Some(text) = payload.downcast_ref::<String>() {
                text.clone()
            } else {
                "unknown panic payload".to_owned()
            };
            warn!(user.id = %user.user_id, %reason, "recovered from a panic; skipping the user");
            None
        }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    type ListUsersStream = BoxStream<'static, Result<User, Status>>;
    type ChatStream = BoxStream<'static, Result<ChatMessage, Status>>;

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let echo = echo::echoed(request.metadata());
        let request = request.into_inner();
        // Labels are part of the sidecar's job identity; the server only shows them.
        let labels: BTreeMap<_, _> = request.labels.iter().collect();
        info!(
            after = %request.after_user_id,
            role = %request.role,
            limit = request.limit,
            ?labels,
            "ListUsers"
        );
        let db = Arc::clone(&self.db);
        let panic_on = Arc::clone(&self.panic_on);
        let start = start_index(&db, &request.after_user_id, self.inclusive);
        let role = request.role;
        let limit = match request.limit {
            0 => usize::MAX,
            limit => limit as usize,
        };
        let users = (start..db.len())
            .filter_map(move |i| {
                let user = &db[i];
                if role.is_empty() || user.role == role {
                    render_or_skip(user, &panic_on)
                } else {
                    None
                }
            })
            // After the skip: a limit counts the users sent.
            .take(limit);
        let stream = self.streams.stream(users, "ListUsers", echo.clone());
        Ok(echo::response(stream, echo))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let echo = echo::echoed(request.metadata());
        let id = request.into_inner().user_id;
        match self
            .db
            .binary_search_by(|u| u.user_id.as_str().cmp(id.as_str()))
        {
            Ok(i) => Ok(echo::response(self.db[i].clone(), echo::padded(echo))),
            Err(_) => {
                let message = format!("no user {id}");
                // A google.rpc.Status in grpc-status-details-bin, as rich-error libraries send.
                let details = RpcStatus {
                    code: Code::NotFound as i32,
                    message: message.clone(),
                }
                .encode_to_vec();
                Err(Status::with_details_and_metadata(
                    Code::NotFound,
                    message,
                    details.into(),
                    echo,
                ))
            }
        }
    }

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let echo = echo::echoed(request.metadata());
        let inbound = request.into_inner();
        let trailers = echo.clone();
        let replies = stream::unfold(Some(inbound), move |inbound| {
            let trailers = trailers.clone();
            async move {
                let mut inbound = inbound?;
                match inbound.message().await {
                    Ok(Some(message)) if message.text == "fail" => {
                        let status =
                            echo::status(Code::InvalidArgument, "fail requested", &trailers);
                        Some((Err(status), None))
                    }
                    Ok(Some(message)) => {
                        let reply = ChatMessage {
                            seq: message.seq,
                            text: format!("echo: {}", message.text),
                        };
                        Some((Ok(reply), Some(inbound)))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        Ok(echo::response(replies.boxed(), echo))
    }
}
