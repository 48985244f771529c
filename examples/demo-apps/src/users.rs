//! The mocked user database. Every user is derived from its generation index alone, so any
//! process (the server, the Rust client, the Python client) computes the same list.
//!
//! The `index`-th user (0-based) is:
//! - `user_id`: the first 16 bytes of SHA-256 of the ASCII text `user-{index}`, with the
//!   RFC 9562 version (8, "custom") and variant bits set, as lowercase 8-4-4-4-12 hex;
//! - `name` `User {index}`, `email` `user{index}@example.com`;
//! - `role` `admin`, `member`, `guest` by `index % 3`;
//! - `created_at` `1_700_000_000 + 60 * index` (Unix seconds).
//!
//! The database is sorted by `user_id` (bytewise), the order the server streams in.

use std::collections::HashSet;

use reprise_proto::demo::v1::User;
use sha2::{Digest, Sha256};

/// Roles, assigned round-robin by generation index.
pub const ROLES: [&str; 3] = ["admin", "member", "guest"];

const CREATED_AT_BASE: i64 = 1_700_000_000;

/// The id of the `index`-th generated user.
pub fn user_id(index: u64) -> String {
    let digest = Sha256::digest(format!("user-{index}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A name-derived id: mark it as a version-8 (custom) UUID with the RFC variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The `index`-th generated user.
pub fn user(index: u64) -> User {
    User {
        user_id: user_id(index),
        name: format!("User {index}"),
        email: format!("user{index}@example.com"),
        role: ROLES[(index % 3) as usize].to_owned(),
        created_at: CREATED_AT_BASE + 60 * index as i64,
    }
}

/// The first `n` users, sorted ascending by `user_id`.
pub fn demo_users(n: usize) -> Vec<User> {
    let mut users: Vec<User> = (0..n as u64).map(user).collect();
    users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    users
}

/// Where a stream over `users` (sorted) starts: the first id strictly after `after`, or with
/// `inclusive` the first id not before it. An empty `after` means the start.
pub fn start_index(users: &[User], after: &str, inclusive: bool) -> usize {
    if after.is_empty() {
        return 0;
    }
    if inclusive {
        users.partition_point(|u| u.user_id.as_str() < after)
    } else {
        users.partition_point(|u| u.user_id.as_str() <= after)
    }
}

/// What a correct `ListUsers` stream over `users` (sorted) returns, in order, when the server
/// skips the ids in `skip` (they panic on it): role filter (`""` = all), strictly after `after`,
/// at most `limit` (0 = all) of the users actually sent.
pub fn expected_user_ids(
    users: &[User],
    role: &str,
    after: &str,
    limit: u32,
    skip: &HashSet<String>,
) -> Vec<String> {
    let limit = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    users[start_index(users, after, false)..]
        .iter()
        .filter(|u| role.is_empty() || u.role == role)
        .filter(|u| !skip.contains(&u.user_id))
        .take(limit)
        .map(|u| u.user_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_rfc9562_v8_uuids() {
        // Pinned: the Python client reimplements this; a change here breaks it.
        assert_eq!(user_id(0), "7fad6a4d-0041-8937-9e2e-f646ad05bae1");
        let id = user_id(42);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn database_is_sorted_unique_and_roles_cycle() {
        let users = demo_users(3000);
        assert!(users.windows(2).all(|w| w[0].user_id < w[1].user_id));
        for role in ROLES {
            assert_eq!(users.iter().filter(|u| u.role == role).count(), 1000);
        }
    }

    #[test]
    fn start_index_honours_inclusive() {
        let users = demo_users(10);
        let pivot = users[4].user_id.clone();
        assert_eq!(start_index(&users, &pivot, false), 5);
        assert_eq!(start_index(&users, &pivot, true), 4);
        assert_eq!(start_index(&users, "", false), 0);
    }

    #[test]
    fn expected_ids_apply_skip_before_limit() {
        let users = demo_users(100);
        let skip: HashSet<String> = [users[1].user_id.clone()].into();
        let ids = expected_user_ids(&users, "", &users[0].user_id, 3, &skip);
        assert_eq!(
            ids,
            vec![
                users[2].user_id.clone(),
                users[3].user_id.clone(),
                users[4].user_id.clone()
            ]
        );
    }
}
