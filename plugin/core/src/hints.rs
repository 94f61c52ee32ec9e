//! Error codes from Entra (AADSTS) and Graph mapped to a one-line hint an admin can act on.
//! The wording follows the switchboard vendor's FAQ (reference/product-guide.md) and
//! graph-facts.md §7.

use crate::model::Problem;

/// The hint for an error code such as `AADSTS7000215` or `Authorization_RequestDenied`.
pub fn hint(code: &str) -> &'static str {
    match code {
        "AADSTS7000215" => {
            "Invalid client secret. If you just created it, wait a minute and save again; make sure you pasted the secret's Value, not its Secret ID. If that doesn't help, create a new client secret."
        }
        "AADSTS7000222" => {
            "The client secret has expired: create a new one under App registrations > Certificates & secrets and enter it in the integration."
        }
        "AADSTS7000218" => "No client secret was sent: enter the client secret in the integration.",
        "AADSTS50126" => "Wrong username or password for an integration user: check both in the integration settings.",
        "AADSTS50076" | "AADSTS50079" => {
            "The integration user is asked for multi-factor authentication, which this sign-in cannot do: exclude the Presence integration users from the MFA Conditional Access policy (and turn off per-user MFA for them)."
        }
        "AADSTS53003" => {
            "A Conditional Access policy blocked the sign-in: exclude the Presence integration users from that policy."
        }
        "AADSTS65001" => {
            "Admin consent is missing: open the app registration's API permissions and click \"Grant admin consent\"."
        }
        "AADSTS700016" => {
            "The Client ID was not found in this tenant: check the Client ID and the Tenant ID in the integration."
        }
        "AADSTS90002" | "AADSTS900023" => {
            "The tenant was not found: check the Tenant ID (the Directory (tenant) ID on the app registration's overview)."
        }
        "AADSTS50034" => "The integration user does not exist in this tenant: check the username.",
        "AADSTS50053" => {
            "The integration user is locked after too many failed sign-ins: check the sign-in logs and unlock it."
        }
        "AADSTS50057" => "The integration user is disabled in Entra ID: enable the account.",
        "AADSTS50055" => "The integration user's password has expired: set a new one and enter it here.",
        "AADSTS500011" => {
            "Microsoft Graph is not available to the app in this tenant: check the Tenant ID and grant admin consent."
        }
        "Authorization_RequestDenied" | "accessDenied" | "Forbidden" => {
            "Insufficient privileges: check the app's permissions (User.Read.All application, Presence.Read.All delegated, and Presence.ReadWrite.All application for Push line status) and that admin consent is granted."
        }
        "InvalidAuthenticationToken" | "unauthenticated" => {
            "Microsoft refused the access token; it is renewed automatically. If this persists, check the app registration."
        }
        "capacity" => {
            "More users than the integration users can watch: add integration users, each one covers 650 users."
        }
        "network" => "Microsoft could not be reached: check the host's network connection, DNS and proxy.",
        "throttled" => "Microsoft is throttling requests; the integration backs off and retries by itself.",
        "subscription-quota" => {
            "The integration user already holds a presence subscription for this app (one is allowed per user): use a separate integration user for each integration."
        }
        _ => "Look the code up in Microsoft's error reference; the detail says which request failed.",
    }
}

/// A [`Problem`] for `code` with its hint.
pub fn problem(code: impl Into<String>, detail: impl Into<String>) -> Problem {
    let code = code.into();
    Problem { hint: hint(&code).to_string(), code, detail: detail.into() }
}

/// Parses an Entra token-endpoint error body (`error`, `error_codes`) into a problem.
pub fn from_token_error(status: u16, body: &[u8], who: &str) -> Problem {
    #[derive(serde::Deserialize)]
    struct TokenError {
        error: Option<String>,
        #[serde(default)]
        error_codes: Vec<u64>,
    }
    match serde_json::from_slice::<TokenError>(body) {
        Ok(e) if !e.error_codes.is_empty() => problem(
            format!("AADSTS{}", e.error_codes[0]),
            format!("token request for {who} refused: HTTP {status}, {}", e.error.unwrap_or_default()),
        ),
        Ok(TokenError { error: Some(err), .. }) => {
            problem(err.clone(), format!("token request for {who} refused: HTTP {status}, {err}"))
        }
        _ => problem(format!("http-{status}"), format!("token request for {who} failed: HTTP {status}")),
    }
}

/// Parses a Graph error body (`{"error":{"code":...}}`) into a problem.
pub fn from_graph_error(status: u16, body: &[u8], what: &str) -> Problem {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
    }
    let code = match serde_json::from_slice::<Outer>(body) {
        Ok(o) => o.error.code,
        Err(_) => format!("http-{status}"),
    };
    let code = if status == 429 { "throttled".to_string() } else { code };
    problem(code, format!("{what}: HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_error_uses_error_codes_not_text() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
        let p = from_token_error(401, body, "the app");
        assert_eq!(p.code, "AADSTS7000215");
        assert!(p.hint.contains("Secret ID"));
    }

    #[test]
    fn mfa_hint_names_conditional_access() {
        let body = br#"{"error":"invalid_grant","error_codes":[50076]}"#;
        let p = from_token_error(400, body, "user a");
        assert_eq!(p.code, "AADSTS50076");
        assert!(p.hint.contains("Conditional Access"));
    }

    #[test]
    fn graph_error_code() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges"}}"#;
        let p = from_graph_error(403, body, "GET /users");
        assert_eq!(p.code, "Authorization_RequestDenied");
        assert!(p.hint.contains("admin consent"));
    }
}
