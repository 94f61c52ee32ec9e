//! Where the plugin may send requests: exact `scheme://host:port` origins, plain `http` only
//! towards loopback. Deny by default.

/// Why an outbound URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL.
    #[error("url: {0}")]
    Malformed(String),
    /// The origin is not on the allow-list (or plain http off loopback); the payload is it.
    #[error("origin {0} is not allowed")]
    NotAllowed(String),
    /// The URL carries credentials.
    #[error("credentials in the URL are not allowed")]
    Credentials,
}

/// Checks an outbound URL against the allowed origins and the rule that plain http goes only
/// to loopback.
pub fn check(allowed: &[String], url: &str) -> Result<url::Url, Refused> {
    let u = url::Url::parse(url).map_err(|e| Refused::Malformed(e.to_string()))?;
    let origin = origin_of(&u);
    let scheme_ok = u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u));
    if !scheme_ok || !allowed.contains(&origin) {
        return Err(Refused::NotAllowed(origin));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Refused::Credentials);
    }
    Ok(u)
}

/// `scheme://host:port` of a URL.
pub fn origin_of(u: &url::Url) -> String {
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
}

/// Whether a URL's host is loopback.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            "https://login.microsoftonline.com:443".into(),
            "https://graph.microsoft.com:443".into(),
            "http://127.0.0.1:9000".into(),
        ]
    }

    #[test]
    fn configured_origins_are_allowed() {
        assert!(check(&allowed(), "https://graph.microsoft.com/v1.0/users?$top=999").is_ok());
        assert!(check(&allowed(), "https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
        assert!(check(&allowed(), "http://127.0.0.1:9000/v1.0/users").is_ok());
    }

    #[test]
    fn anything_else_is_not_allowed() {
        for url in [
            "https://evil.example.com/steal",
            "https://graph.microsoft.com:8443/v1.0/users",
            "http://graph.microsoft.com/v1.0/users",
            "http://127.0.0.1:9001/",
            "https://graph.microsoft.com.evil.example/v1.0",
        ] {
            assert!(matches!(check(&allowed(), url), Err(Refused::NotAllowed(_))), "{url}");
        }
        assert!(matches!(check(&allowed(), "not a url"), Err(Refused::Malformed(_))));
        assert_eq!(check(&allowed(), "https://u:p@graph.microsoft.com/").unwrap_err(), Refused::Credentials);
    }
}
