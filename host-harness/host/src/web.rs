//! What the host's HTTP routes share ([`crate::api`], [`crate::admin_api`], [`crate::ui`]):
//! their state, and reading a request body within a size and a time.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::registry::Registry;

/// Time a client has to send a webhook, overrides, integration or form body once its head
/// arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes' state: the integrations, and what `/metrics` shows besides their statuses.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Device code sign-ins of integration users.
    pub(crate) sign_ins: Arc<crate::signin::SignIns>,
}

/// Reads a body of at most `limit` bytes within `deadline`.
pub(crate) async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {limit} bytes")).into_response()),
        Err(_) => {
            Err((StatusCode::REQUEST_TIMEOUT, format!("the body took over {} s", deadline.as_secs())).into_response())
        }
    }
}
