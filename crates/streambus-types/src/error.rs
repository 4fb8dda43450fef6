//! The small set of error codes every streambus error maps to.
//!
//! One table maps each [`ErrorCode`] to its gRPC status code and its HTTP status, side by
//! side, so the wire protocol, the admin API and the in-process API agree on what a
//! failure means. The table is pinned by a test: changing a mapping is a breaking change.
//!
//! Which code a refusal gets follows one rule: input that breaks the protocol's fixed
//! rules (topic syntax, length and depth; an unknown option; frames out of order) is
//! `INVALID_ARGUMENT` / 400; a valid request past a limit the server is configured with
//! (message, batch and frame sizes; sessions, subscriptions, topics) or past its
//! capacity at the moment (backpressure: a full mailbox) is `RESOURCE_EXHAUSTED` / 429.

use serde::{Deserialize, Serialize};

/// The category of a failure, as seen by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request breaks the protocol's fixed rules: bad topic, unknown option or frame.
    InvalidArgument,
    /// The thing named does not exist (an unknown subscription id).
    NotFound,
    /// A configured limit (a size or a count) or a buffer is full; retrying later, or
    /// smaller, may succeed.
    ResourceExhausted,
    /// The caller is not authenticated.
    Unauthenticated,
    /// The caller may not do this.
    PermissionDenied,
    /// The bus, or the session, is closed or shutting down.
    Unavailable,
    /// A bug or an unexpected failure inside the bus.
    Internal,
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The mapping table: (gRPC status code number, HTTP status).
    const fn table(self) -> (i32, u16) {
        match self {
            ErrorCode::InvalidArgument => (3, 400),
            ErrorCode::NotFound => (5, 404),
            ErrorCode::ResourceExhausted => (8, 429),
            ErrorCode::Unauthenticated => (16, 401),
            ErrorCode::PermissionDenied => (7, 403),
            ErrorCode::Unavailable => (14, 503),
            ErrorCode::Internal => (13, 500),
        }
    }

    /// The gRPC status code number (`tonic::Code` as `i32`).
    pub const fn grpc_code(self) -> i32 {
        self.table().0
    }

    /// The HTTP status code.
    pub const fn http_status(self) -> u16 {
        self.table().1
    }

    /// A stable snake_case name, used as the reason code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC and HTTP mappings are exactly these; a change here breaks clients.
    #[test]
    fn mapping_table_is_pinned() {
        let table: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.grpc_code(), c.http_status()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("invalid_argument", 3, 400),
                ("not_found", 5, 404),
                ("resource_exhausted", 8, 429),
                ("unauthenticated", 16, 401),
                ("permission_denied", 7, 403),
                ("unavailable", 14, 503),
                ("internal", 13, 500),
            ]
        );
    }
}
