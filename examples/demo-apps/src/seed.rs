//! The conference talk's own stream (`pb.Server/GetData`): `Data` messages whose `Value`
//! counts from 0, so the first message has no `Value` bytes on the wire, resumed "from,
//! inclusive" through `DataRequest.Offset`.
//!
//! Message `Value` `v` carries `UserID` [`user_id`]`(v)` (the demo user of generation index
//! `v`) and `Name` `User {v}`. A server run with `--data N` streams Values `0 .. N`.

use std::ops::Range;

use reprise_proto::pb::Data;

use crate::users::user_id;

/// The message of one Value.
pub fn data(value: i32) -> Data {
    Data {
        user_id: user_id(u64::try_from(value).unwrap_or_default()),
        name: format!("User {value}"),
        value,
    }
}

/// The Values a `GetData` stream over `total` messages sends for `offset`: from `offset`
/// inclusive (a negative one means the start) to `total - 1`.
pub fn values(offset: i32, total: u32) -> Range<i32> {
    let end = i32::try_from(total).unwrap_or(i32::MAX);
    offset.max(0)..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_inclusive_and_start_at_zero() {
        assert_eq!(values(0, 5), 0..5);
        assert_eq!(values(3, 5), 3..5);
        assert_eq!(values(-7, 5), 0..5);
        assert!(values(9, 5).is_empty());
    }

    #[test]
    fn value_zero_has_no_bytes_on_the_wire() {
        use prost::Message as _;
        // Fields in number order: Value (4) comes last when it is written at all.
        assert!(data(0).encode_to_vec().ends_with(b"User 0"));
        assert!(data(1).encode_to_vec().ends_with(&[0x20, 0x01]));
    }

    #[test]
    fn data_follows_the_demo_users() {
        let first = data(0);
        assert_eq!(first.user_id, "7fad6a4d-0041-8937-9e2e-f646ad05bae1");
        assert_eq!((first.name.as_str(), first.value), ("User 0", 0));
        assert_eq!(data(42).user_id, user_id(42));
    }
}
