//! `outbound-http`: the allow-list and the caps first, then the HTTP backend. The request runs
//! on tokio; its outcome reaches the plugin later as `sync.on-http-response`.

use std::sync::atomic::Ordering;

use crate::allow_list::{self, Refused};
use crate::bindings::outbound_http::{self, HttpError as E};
use crate::http::OutboundRequest;
use crate::instance::HostState;
use crate::sandbox::{HTTP_TIMEOUT, MAX_HTTP_BODY, MAX_HTTP_HEADER_BYTES, MAX_HTTP_HEADERS, MAX_URL_BYTES, cap};

/// Methods the plugin may use.
const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "PUT", "DELETE"];

/// Checks a request against the allow-list and the caps: what may go out, or why not.
pub(crate) fn check(allowed: &[String], req: outbound_http::Request) -> Result<OutboundRequest, E> {
    if req.url.len() > MAX_URL_BYTES {
        return Err(E::InvalidRequest(format!("url longer than {MAX_URL_BYTES} bytes")));
    }
    let url = allow_list::check(allowed, &req.url).map_err(|e| match e {
        Refused::NotAllowed(origin) => E::NotAllowed(origin),
        other => E::InvalidRequest(other.to_string()),
    })?;
    if !METHODS.contains(&req.method.as_str()) {
        return Err(E::InvalidRequest(format!("method {}", cap(req.method, 16))));
    }
    if req.body.len() > MAX_HTTP_BODY {
        return Err(E::TooLarge(MAX_HTTP_BODY as u64));
    }
    if req.headers.len() > MAX_HTTP_HEADERS
        || req.headers.iter().any(|(k, v)| k.len() + v.len() > MAX_HTTP_HEADER_BYTES)
    {
        return Err(E::InvalidRequest(format!(
            "at most {MAX_HTTP_HEADERS} headers of at most {MAX_HTTP_HEADER_BYTES} bytes each"
        )));
    }
    Ok(OutboundRequest {
        method: req.method,
        url,
        headers: req.headers,
        body: req.body,
        timeout: HTTP_TIMEOUT,
        max_response_bytes: MAX_HTTP_BODY,
    })
}

impl outbound_http::Host for HostState {
    fn start(&mut self, id: u64, req: outbound_http::Request) -> Result<(), E> {
        let req = check(&self.ctx.allowed_origins, req).inspect_err(|e| {
            if let E::NotAllowed(origin) = e {
                self.ctx.refused_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(integration = %self.ctx.name, %origin, "outbound request refused: origin not allowed");
            }
        })?;
        let ctx = self.ctx.clone();
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        let (method, url) = (req.method.clone(), req.url.to_string());
        let started = std::time::Instant::now();
        let sent = ctx.http.send(req);
        tokio::spawn(async move {
            let outcome = sent.await;
            let status = outcome.as_ref().ok().map(|r| r.status);
            ctx.metrics.graph_request(&method, &url, status, started.elapsed().as_secs_f64());
            if !(ctx.http_done)(id, outcome).await {
                ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, url: &str) -> outbound_http::Request {
        outbound_http::Request { method: method.into(), url: url.into(), headers: vec![], body: vec![] }
    }

    #[test]
    fn caps_are_obeyed_and_violated() {
        let allowed = vec!["https://graph.microsoft.com:443".to_string()];
        let ok = check(&allowed, req("GET", "https://graph.microsoft.com/v1.0/users")).unwrap();
        assert_eq!(ok.max_response_bytes, MAX_HTTP_BODY);
        let long = format!("https://graph.microsoft.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(check(&allowed, req("GET", &long)), Err(E::InvalidRequest(_))));
        assert!(matches!(check(&allowed, req("TRACE", "https://graph.microsoft.com/")), Err(E::InvalidRequest(_))));
        assert!(matches!(check(&allowed, req("GET", "https://evil.example/")), Err(E::NotAllowed(_))));
        let mut big = req("POST", "https://graph.microsoft.com/");
        big.body = vec![0; MAX_HTTP_BODY + 1];
        assert!(matches!(check(&allowed, big), Err(E::TooLarge(_))));
        let mut many = req("GET", "https://graph.microsoft.com/");
        many.headers = vec![("a".into(), "b".into()); MAX_HTTP_HEADERS + 1];
        assert!(matches!(check(&allowed, many), Err(E::InvalidRequest(_))));
    }
}
