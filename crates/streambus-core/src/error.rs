//! The one error type of the core, with the [`ErrorCode`] each variant maps to.

use ractor::MessagingErr;
use ractor::rpc::CallResult;
use streambus_types::{ConfigError, ErrorCode, Message, TopicError};

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A topic or filter string is invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// A message is larger than `limits.max_message_bytes`.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the refused message (payload plus headers).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A publish batch has more than `limits.max_batch_messages` messages.
    #[error("batch of {len} messages exceeds the limit of {max}")]
    BatchTooLarge {
        /// Messages in the refused batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `try_publish`: the topic's mailbox is full. The messages that were not admitted
    /// are handed back, in order; any before them were admitted.
    #[error("topic mailbox is full ({} messages not admitted)", .0.len())]
    Full(Vec<Message>),
    /// The session already holds `limits.max_subscriptions_per_session` subscriptions.
    #[error("too many subscriptions: the limit is {max} per session")]
    TooManySubscriptions {
        /// The limit.
        max: usize,
    },
    /// `limits.max_sessions` sessions are open.
    #[error("too many sessions: the limit is {max}")]
    TooManySessions {
        /// The limit.
        max: usize,
    },
    /// `limits.max_topics` topics are alive.
    #[error("too many topics: the limit is {max}")]
    TooManyTopics {
        /// The limit.
        max: usize,
    },
    /// A subscription option is unusable (e.g. a zero buffer or an empty group name).
    #[error("invalid subscription option: {0}")]
    InvalidOption(String),
    /// No subscription with this id in this session.
    #[error("no subscription with id {0}")]
    UnknownSubscription(u64),
    /// No live client session with this id.
    #[error("no session with id {0}")]
    UnknownSession(u64),
    /// No sink with this name is configured.
    #[error("no sink named {0:?}")]
    UnknownSink(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A durable publish reached live subscribers but not every durable sink's buffer.
    #[error("not durable: a durable sink could not store the message (buffer full or disk error)")]
    NotDurable,
    /// The bus is draining for shutdown: what was admitted is still delivered, but no
    /// new publish, subscription or session is taken.
    #[error("the bus is shutting down: no new publishes or subscriptions")]
    Draining,
    /// The session or the bus is closed.
    #[error("closed")]
    Closed,
    /// The session's identity may not do this (its roles' permissions).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The session's identity is over its message or byte rate, and its quota refuses
    /// rather than waits.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The session's identity holds its most sessions or subscriptions.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// An unexpected failure inside the bus.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BusError {
    /// The error's category, which fixes its gRPC and HTTP status.
    ///
    /// The rule: a request that breaks the protocol's fixed rules (topic syntax, an
    /// unusable option) is `INVALID_ARGUMENT`; a valid request past a limit the server is
    /// configured with (message, batch or frame size; sessions, subscriptions, topics) or
    /// past its capacity right now (a full mailbox) is `RESOURCE_EXHAUSTED`.
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::InvalidTopic(_) | BusError::InvalidOption(_) | BusError::Config(_) => ErrorCode::InvalidArgument,
            BusError::Full(_)
            | BusError::MessageTooLarge { .. }
            | BusError::BatchTooLarge { .. }
            | BusError::TooManySubscriptions { .. }
            | BusError::TooManySessions { .. }
            | BusError::TooManyTopics { .. }
            | BusError::RateLimited(_)
            | BusError::QuotaExceeded(_) => ErrorCode::ResourceExhausted,
            BusError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            BusError::UnknownSubscription(_) | BusError::UnknownSession(_) | BusError::UnknownSink(_) => {
                ErrorCode::NotFound
            }
            BusError::Closed | BusError::Draining | BusError::NotDurable => ErrorCode::Unavailable,
            BusError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The answer to an actor call, or [`BusError::Closed`] when the actor is gone or did
/// not answer in time (the only ways a call fails between live actors of one bus).
pub(crate) fn answered<T, M>(result: Result<CallResult<T>, MessagingErr<M>>) -> Result<T, BusError> {
    match result {
        Ok(CallResult::Success(t)) => Ok(t),
        _ => Err(BusError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backpressure and every configured limit are RESOURCE_EXHAUSTED, input that breaks
    /// the protocol's rules INVALID_ARGUMENT.
    #[test]
    fn codes() {
        assert_eq!(BusError::Full(vec![]).code().grpc_code(), 8);
        assert_eq!(BusError::TooManySessions { max: 1 }.code().http_status(), 429);
        let limits = [
            BusError::MessageTooLarge { size: 2, max: 1 },
            BusError::BatchTooLarge { len: 2, max: 1 },
            BusError::TooManySubscriptions { max: 1 },
            BusError::TooManyTopics { max: 1 },
        ];
        for e in limits {
            assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
        }
        assert_eq!(BusError::InvalidOption("x".into()).code(), ErrorCode::InvalidArgument);
        assert_eq!(
            BusError::InvalidTopic(TopicError::Empty).code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(BusError::Closed.code(), ErrorCode::Unavailable);
    }
}
