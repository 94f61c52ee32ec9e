//! Error codes from Entra (AADSTS) and Graph mapped to a one-line hint an admin can act on.
//! The wording follows the switchboard vendor's FAQ for this integration and Microsoft's error
//! references (<https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes>,
//! <https://learn.microsoft.com/en-us/graph/errors>).

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
            "The integration user is asked for multi-factor authentication, which a password sign-in cannot do: sign it in with a code (\"Sign in (MFA)\" on its row, or host-harness device-code), or exclude it from the MFA Conditional Access policy."
        }
        "AADSTS70008" | "AADSTS700082" | "AADSTS50173" => {
            "The integration user's sign-in (its refresh token) has expired or was revoked: sign it in again with a code (\"Sign in (MFA)\" on its row, or host-harness device-code)."
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
        "clock-offset" => {
            "The host's clock differs from Microsoft's by the minutes in the detail; the plugin \
             corrects for it, but enable time sync (NTP) on the host."
        }
        "subscription-stuck" => {
            "The old subscription could not be deleted, so no new one is created for this integration user \
             (Graph allows one per user); it is retried."
        }
        "capacity" => {
            "More users than the integration users can watch: add integration users, each one covers 650 users."
        }
        "network" => "Microsoft could not be reached: check the host's network connection, DNS and proxy.",
        "throttled" => "Microsoft is throttling requests; the integration backs off and retries by itself.",
        "subscription-quota" => {
            "The integration user already holds a presence subscription for this app (one is allowed per user): use a separate integration user for each integration."
        }
        "Conflict" => {
            "Microsoft refused the subscription as a duplicate: another integration or an earlier installation watches the same users with the same app registration. Remove the other one, or give each integration its own app registration."
        }
        "AADSTS9001023" => {
            "This sign-in does not work with the tenant 'common' or 'consumers': enter the Directory (tenant) ID."
        }
        "AADSTS700027" => {
            "The client certificate's signature was refused: upload the current certificate to the app registration."
        }
        "AADSTS50196" | "temporarily_unavailable" => {
            "Microsoft's sign-in service is temporarily unavailable; the integration retries by itself."
        }
        "invalid_grant" | "consent_required" | "interaction_required" => {
            "The integration user cannot sign in without interaction (consent, MFA or a password change): grant admin consent and check the user in Entra ID."
        }
        "TooManyRequests" | "activityLimitReached" => {
            "Microsoft is throttling requests; the integration waits as long as Microsoft asks (Retry-After) and retries by itself."
        }
        "serviceNotAvailable" | "gatewayTimeout" | "generalException" | "UnknownError" => {
            "Microsoft Graph failed temporarily; the integration keeps the last good data and retries with backoff."
        }
        "itemNotFound" => {
            "Microsoft reports the item as gone (a subscription or user); the integration recreates what it needs."
        }
        "syncStateNotFound" | "resyncRequired" => {
            "Microsoft dropped the directory change-tracking state; the integration re-reads the whole directory by itself."
        }
        "quotaLimitReached" | "ExtensionError" => {
            "Microsoft refused the subscription: check that the webhook URL is reachable from the internet over HTTPS and answers within 10 seconds."
        }
        "insufficient_claims" => {
            "A Conditional Access policy demands more from the sign-in (a claims challenge): exclude the integration users from that policy."
        }
        "invalidRequest" | "BadRequest" => {
            "Microsoft refused a request as invalid; the detail names it. This is a defect: please report it with the detail."
        }
        "validation-tokens-missing" => {
            "Microsoft sends notifications without validation tokens, so none can be trusted: in Entra ID, set the app's enterprise application \"Assignment required\" to No (appRoleAssignmentRequired=false), or assign an app role to the \"Microsoft Graph Change Tracking\" service principal (0bf30f3b-4a52-48df-9a82-234910c4a086)."
        }
        "validation-token-invalid" => {
            "Notifications arrived whose validation token is not from Microsoft for this app and were ignored: if this keeps rising, someone is posting to the webhook URL."
        }
        "signing-keys" => {
            "Microsoft's token signing keys could not be read, so notifications wait: check that the host reaches login.microsoftonline.com."
        }
        "malformed-response" => {
            "Microsoft sent a response the integration could not read; it retries. If this persists, report the detail."
        }
        "token-expired" => "An access token ran out during a long operation; a new one is fetched automatically.",
        "plugin-trap" => {
            "The plugin failed and was restarted from its saved state; if this repeats, roll back the plugin release."
        }
        _ => "Look the code up in Microsoft's error reference; the detail says which request failed.",
    }
}

/// Every code the service can meet and has a specific hint for (Entra's and Graph's error references, and our
/// own codes). The tests check each has one.
pub const KNOWN_CODES: &[&str] = &[
    "AADSTS7000215",
    "AADSTS7000222",
    "AADSTS7000218",
    "AADSTS50126",
    "AADSTS50076",
    "AADSTS50079",
    "AADSTS70008",
    "AADSTS700082",
    "AADSTS50173",
    "AADSTS53003",
    "AADSTS65001",
    "AADSTS700016",
    "AADSTS90002",
    "AADSTS900023",
    "AADSTS50034",
    "AADSTS50053",
    "AADSTS50057",
    "AADSTS50055",
    "AADSTS500011",
    "AADSTS9001023",
    "AADSTS700027",
    "AADSTS50196",
    "invalid_grant",
    "consent_required",
    "interaction_required",
    "temporarily_unavailable",
    "Authorization_RequestDenied",
    "accessDenied",
    "InvalidAuthenticationToken",
    "unauthenticated",
    "TooManyRequests",
    "activityLimitReached",
    "serviceNotAvailable",
    "gatewayTimeout",
    "generalException",
    "itemNotFound",
    "syncStateNotFound",
    "resyncRequired",
    "quotaLimitReached",
    "ExtensionError",
    "insufficient_claims",
    "invalidRequest",
    "capacity",
    "network",
    "throttled",
    "subscription-quota",
    "Conflict",
    "validation-tokens-missing",
    "validation-token-invalid",
    "signing-keys",
    "malformed-response",
    "token-expired",
    "plugin-trap",
];

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
    fn every_known_code_has_its_own_hint() {
        let fallback = hint("no-such-code");
        for code in KNOWN_CODES {
            assert_ne!(hint(code), fallback, "{code} has no hint");
        }
        // The product guide's FAQ entries, by their telling words.
        assert!(hint("AADSTS7000215").contains("Secret ID"));
        assert!(hint("AADSTS7000222").contains("expired"));
        assert!(hint("AADSTS50079").contains("Conditional Access"));
        assert!(hint("AADSTS65001").contains("admin consent"));
        assert!(hint("Authorization_RequestDenied").contains("permissions"));
    }

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
