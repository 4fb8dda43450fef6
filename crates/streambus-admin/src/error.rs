//! The admin API's one error body, with the HTTP status of its [`ErrorCode`].
//!
//! Every failure of every endpoint, including a malformed query, path or body and an
//! unknown route, answers with the same shape:
//!
//! ```json
//! {"error": {"code": "not_found", "message": "no session with id 42", "field": null}}
//! ```
//!
//! `code` is the [`ErrorCode`]'s stable name and fixes the status (the table shared
//! with the gRPC API); `field` names the offending request field when there is one.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use streambus_core::BusError;
use streambus_types::ErrorCode;

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The category, which fixes the HTTP status.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault (`topic`, `limit`, `id`…), if one is.
    pub field: Option<String>,
}

/// The JSON body of an error.
#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'static str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    /// An `INVALID_ARGUMENT` (400) naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A `NOT_FOUND` (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            code: ErrorCode::NotFound,
            message: message.into(),
            field: None,
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        let field = match &e {
            BusError::InvalidTopic(_) => Some("topic".to_owned()),
            BusError::MessageTooLarge { .. } => Some("payload".to_owned()),
            _ => None,
        };
        ApiError {
            code: e.code(),
            message: e.to_string(),
            field,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(Body {
            error: Inner {
                code: self.code.as_str(),
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    /// A bus error keeps its code's status, and the body carries the code's name, the
    /// message and the field.
    #[test]
    fn bus_errors_map_to_their_status_and_body() {
        let e = ApiError::from(BusError::UnknownSession(42));
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(json["error"]["message"], "no session with id 42");
        assert!(json["error"]["field"].is_null());
        let e = ApiError::from(BusError::Full(vec![]));
        assert_eq!(e.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ApiError::invalid("limit", "x").status_code(), StatusCode::BAD_REQUEST);
    }
}
