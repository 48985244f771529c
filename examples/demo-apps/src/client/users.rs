//! `users`: ListUsers, checked for order, duplicates and (with `--expect-users`) exactness.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reprise_proto::demo::v1::user_service_client::UserServiceClient;
use reprise_proto::demo::v1::{ListUsersRequest, User};
use tonic::{Code, Status};

use super::{ClientError, Connection, Summary, open_record, read_all};
use crate::users::{demo_users, expected_user_ids};

#[derive(Debug, Clone, Default)]
pub struct UsersOptions {
    pub role: String,
    pub limit: u32,
    pub after: String,
    pub labels: Vec<(String, String)>,
    /// Sleep after every message: a slow consumer.
    pub slow: Duration,
    /// Append every received user_id as a line, written per message.
    pub record: Option<PathBuf>,
    /// The server's database size: check the stream is exactly what it must be.
    pub expect_users: Option<usize>,
    /// Ids the server panics on (and skips).
    pub skip: HashSet<String>,
}

/// What the stream must be, computed from the same generator the server uses.
struct Expectation {
    ids: Vec<String>,
    by_id: HashMap<String, User>,
}

struct Check {
    role: String,
    after: String,
    /// Distinct ids at or before `after`: never part of a correct answer.
    not_after: u64,
    seen: HashSet<String>,
    highest: Option<String>,
    expectation: Option<Expectation>,
    record: Option<File>,
    summary: Summary,
}

impl Check {
    fn observe(&mut self, user: User) -> Result<(), Status> {
        if let Some(record) = &mut self.record {
            // One write per line: what a killed client read is on disk.
            record
                .write_all(format!("{}\n", user.user_id).as_bytes())
                .map_err(|e| Status::internal(format!("writing the --record file: {e}")))?;
        }
        self.summary.saw(&user.user_id);
        let wrong_role = !self.role.is_empty() && user.role != self.role;
        let wrong_record = self
            .expectation
            .as_ref()
            .and_then(|e| e.by_id.get(&user.user_id))
            .is_some_and(|expected| *expected != user);
        if wrong_role || wrong_record {
            self.summary.corrupt += 1;
        }
        if self.seen.contains(&user.user_id) {
            self.summary.duplicates += 1;
            return Ok(());
        }
        if self
            .highest
            .as_ref()
            .is_some_and(|highest| user.user_id <= *highest)
        {
            self.summary.out_of_order += 1;
        } else {
            self.highest = Some(user.user_id.clone());
        }
        if !self.after.is_empty() && user.user_id <= self.after {
            self.not_after += 1;
        }
        self.seen.insert(user.user_id);
        Ok(())
    }

    fn compare(&mut self) {
        let Some(expectation) = &self.expectation else {
            self.summary.unexpected = self.not_after;
            return;
        };
        self.summary.missing = expectation
            .ids
            .iter()
            .filter(|id| !self.seen.contains(*id))
            .count() as u64;
        let expected: HashSet<&String> = expectation.ids.iter().collect();
        self.summary.unexpected =
            self.seen.iter().filter(|id| !expected.contains(id)).count() as u64;
    }
}

/// Streams ListUsers and judges what arrived. Fails only on local problems (the record file);
/// every gRPC outcome is in the summary.
pub async fn list_users(conn: &Connection, opts: &UsersOptions) -> Result<Summary, ClientError> {
    let record = open_record(opts.record.as_ref())?;
    let expectation = opts.expect_users.map(|n| {
        let db = demo_users(n);
        let ids = expected_user_ids(&db, &opts.role, &opts.after, opts.limit, &opts.skip);
        let by_id = db.into_iter().map(|u| (u.user_id.clone(), u)).collect();
        Expectation { ids, by_id }
    });
    let mut check = Check {
        role: opts.role.clone(),
        after: opts.after.clone(),
        not_after: 0,
        seen: HashSet::new(),
        highest: None,
        expectation,
        record,
        summary: Summary::new("users"),
    };

    let request = ListUsersRequest {
        after_user_id: opts.after.clone(),
        role: opts.role.clone(),
        limit: opts.limit,
        labels: opts.labels.iter().cloned().collect(),
    };
    let started = Instant::now();
    let outcome = conn
        .within_deadline(async {
            let mut client = UserServiceClient::new(conn.channel());
            let response = client.list_users(conn.request(request)).await?;
            check.summary.headers(response.metadata());
            read_all(&mut response.into_inner(), opts.slow, |user| {
                check.observe(user)
            })
            .await
        })
        .await;
    check.summary.ended(outcome);
    check.compare();
    Ok(check.summary.finish(started, Code::Ok))
}
