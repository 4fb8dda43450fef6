//! Who may use the admin plane: with a [`Gate`], every endpoint but the probes asks for
//! credentials (`authorization: Bearer <token>` or `Basic <user:password>`, the same
//! identities as the gRPC API); reading needs the `read` right, actions (`POST`) the
//! `admin` right. Without credentials the answer is 401 with a `Basic` challenge (a
//! browser then asks for a user and password); with too few rights, 403.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use streambus_types::ErrorCode;
use streambus_types::config::AdminAccess;

use crate::{AdminState, ApiError};

/// What the admin plane asks of the program's authentication: the admin rights of a
/// request's `authorization` header, or why it has none.
pub trait Gate: Send + Sync + 'static {
    /// The rights of `authorization` (`None`: no header); `Err` with a reason when the
    /// credentials are missing or bad.
    fn rights<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<AdminAccess, String>> + Send + 'a>>;
}

/// A shared gate.
pub type SharedGate = Arc<dyn Gate>;

/// The middleware: checks the rights a request needs before its handler runs.
pub(crate) async fn check(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let gate = request.app_data::<web::Data<AdminState>>().and_then(|s| s.gate.clone());
    if let Some(gate) = gate {
        let needed = if request.method() == Method::GET || request.method() == Method::HEAD {
            AdminAccess::Read
        } else {
            AdminAccess::Admin
        };
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let refusal = match gate.rights(authorization.as_deref()).await {
            Ok(rights) if rights >= needed => None,
            Ok(rights) => Some(ApiError {
                code: ErrorCode::PermissionDenied,
                message: format!("this identity's admin right is {rights:?}; this needs {needed:?}"),
                field: None,
            }),
            Err(reason) => Some(ApiError {
                code: ErrorCode::Unauthenticated,
                message: reason,
                field: None,
            }),
        };
        if let Some(error) = refusal {
            let mut response = error.error_response();
            if error.code == ErrorCode::Unauthenticated {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"streambus\""),
                );
            }
            return Ok(request.into_response(response).map_into_right_body());
        }
    }
    next.call(request).await.map(ServiceResponse::map_into_left_body)
}
