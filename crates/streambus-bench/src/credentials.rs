//! The credentials every connection of a run presents (`--token`, or `STREAMBUS_TOKEN`),
//! so that a bus with authentication on is measured like one without.

use std::sync::OnceLock;

use streambus::client::ClientAuth;

static TOKEN: OnceLock<String> = OnceLock::new();

/// Sets the run's bearer token (once, before anything connects).
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The run's credentials.
pub fn auth() -> ClientAuth {
    TOKEN.get().map_or(ClientAuth::None, |t| ClientAuth::Token(t.clone()))
}
