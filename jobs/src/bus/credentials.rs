//! The broker password kept out of the URI lapin sees: its TCP layer logs the whole URI
//! (password included) at trace level, so for PLAIN auth (RabbitMQ's default) we hand lapin a
//! URI without the password and answer the SASL exchange ourselves.

use std::fmt;

use lapin::auth::AuthProvider;
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPUri, SASLMechanism};

#[derive(Clone)]
pub(super) struct PlainAuth {
    username: String,
    password: String,
}

impl fmt::Debug for PlainAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AuthProvider for PlainAuth {
    fn mechanism(&self) -> ShortString {
        "PLAIN".into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        Ok(format!("\0{}\0{}", self.username, self.password).into())
    }
}

/// Moves the password out of `uri` when the mechanism is PLAIN; other mechanisms keep
/// lapin's own handling.
pub(super) fn take_password(uri: &mut AMQPUri) -> Option<PlainAuth> {
    let plain = matches!(uri.query.auth_mechanism, None | Some(SASLMechanism::Plain));
    if !plain || uri.authority.userinfo.password.is_empty() {
        return None;
    }
    Some(PlainAuth {
        username: uri.authority.userinfo.username.clone(),
        password: std::mem::take(&mut uri.authority.userinfo.password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> AMQPUri {
        url.parse().unwrap_or_default()
    }

    #[test]
    fn the_password_leaves_the_uri() {
        let mut uri = parse("amqp://alice:s3cret@rabbit:5672/%2f");
        let auth = take_password(&mut uri);
        assert!(!format!("{uri:?}").contains("s3cret"));
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert_eq!(uri.authority.userinfo.username, "alice");
        let starter = auth.and_then(|a| a.auth_starter().ok());
        assert_eq!(
            starter.map(|s| s.to_string()),
            Some("\0alice\0s3cret".to_owned())
        );
    }

    #[test]
    fn other_mechanisms_are_left_to_lapin() {
        let mut uri = parse("amqp://alice:s3cret@rabbit/%2f?auth_mechanism=amqplain");
        assert!(take_password(&mut uri).is_none());
        assert_eq!(uri.authority.userinfo.password, "s3cret");
    }
}
