//! The outbound-HTTP seam. The `outbound-http` import checks every request against the
//! integration's allow-list and the size caps first ([`crate::imports::outbound_http`]); only
//! then does it reach an [`HttpClient`]. [`ReqwestClient`] is the default; tests and
//! platforms plug in their own.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use crate::bindings::outbound_http::{HttpError, Response};

/// A request the allow-list let through.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: String,
    /// The URL, on the allow-list.
    pub url: url::Url,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body (empty for none).
    pub body: Vec<u8>,
    /// No complete response within this: [`HttpError::Timeout`].
    pub timeout: Duration,
    /// A larger response body: [`HttpError::TooLarge`].
    pub max_response_bytes: usize,
}

/// What sending a request comes to.
pub type HttpFuture = Pin<Box<dyn Future<Output = Result<Response, HttpError>> + Send>>;

/// Sends the plugin's requests.
pub trait HttpClient: Send + Sync + 'static {
    /// Sends `req`; the future resolves to the response or why there is none.
    fn send(&self, req: OutboundRequest) -> HttpFuture;
}

/// The default client: reqwest with rustls. It follows no redirect: the allow-list checked
/// the request's URL, and a redirect to another origin would take the request (a client
/// secret in its body, say) past it. The plugin gets the 3xx answer as it is.
#[derive(Clone)]
pub struct ReqwestClient(reqwest::Client);

impl ReqwestClient {
    /// A client with reqwest's defaults, but no redirects.
    pub fn new() -> anyhow::Result<ReqwestClient> {
        Ok(ReqwestClient(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?))
    }
}

impl HttpClient for ReqwestClient {
    fn send(&self, req: OutboundRequest) -> HttpFuture {
        let method = reqwest::Method::from_bytes(req.method.as_bytes());
        let client = self.0.clone();
        Box::pin(async move {
            let method = method.map_err(|_| HttpError::InvalidRequest("method".into()))?;
            let mut builder = client.request(method, req.url).timeout(req.timeout).body(req.body);
            for (k, v) in &req.headers {
                builder = builder.header(k, v);
            }
            perform(builder, req.max_response_bytes).await
        })
    }
}

async fn perform(builder: reqwest::RequestBuilder, max_body: usize) -> Result<Response, HttpError> {
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            HttpError::Timeout
        } else if e.is_builder() {
            HttpError::InvalidRequest(e.to_string())
        } else {
            HttpError::Connection(without_url(&e))
        }
    };
    let mut resp = builder.send().await.map_err(classify)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > max_body {
            return Err(HttpError::TooLarge(max_body as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, headers, body })
}

/// reqwest's Display includes the URL, whose query may hold ids; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if msg.is_empty() { "connection failed".into() } else { msg }
}
