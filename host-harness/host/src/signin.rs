//! The device code sign-in of an integration user who must use multi-factor authentication
//! (Entra refuses such a user the password grant, AADSTS50076): the host asks Entra's
//! `/devicecode` for a code, an administrator signs the user in elsewhere with it, and the
//! host polls the token endpoint as the protocol says (no sooner than `interval`; 5 s more
//! after each `slow_down`; until `expires_in`). The refresh token it gets is kept sealed
//! ([`crate::imports::credentials`]) and the integration re-starts: its plugin then signs the
//! user in with it (WIT `credentials`), and hands back each successor.
//! (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code>,
//! RFC 8628.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::http::OutboundRequest;
use crate::registry::{Registry, RegistryError};

/// The scope asked for: presence, and a refresh token.
pub const SCOPE: &str = "https://graph.microsoft.com/Presence.Read.All offline_access";
/// The longest wait between two polls (a server asking for more is not followed further).
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Where a sign-in stands.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SignIn {
    /// Waiting for the user: open `verification_uri` and enter `user_code`.
    Pending {
        /// The code to enter.
        user_code: String,
        /// Where to enter it.
        verification_uri: String,
        /// Entra's words for it.
        message: String,
    },
    /// Signed in: the integration uses the refresh token.
    SignedIn,
    /// It failed: Entra's code (`authorization_declined`, `expired_token`, an AADSTS code) and
    /// its words.
    Failed {
        /// The code.
        code: String,
        /// What happened.
        detail: String,
    },
}

/// The sign-ins of a host, by integration and user.
#[derive(Default)]
pub struct SignIns {
    map: Mutex<HashMap<(String, String), SignIn>>,
}

impl SignIns {
    /// Where `username`'s sign-in for `integration` stands.
    pub fn get(&self, integration: &str, username: &str) -> Option<SignIn> {
        self.map.lock().unwrap().get(&(integration.to_string(), username.to_lowercase())).cloned()
    }

    fn set(&self, integration: &str, username: &str, s: SignIn) {
        self.map.lock().unwrap().insert((integration.to_string(), username.to_lowercase()), s);
    }
}

/// An Entra answer: its JSON, and its `error` (none on success).
fn answer(r: &crate::http::Response) -> (serde_json::Value, Option<String>) {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let error = (r.status != 200).then(|| v["error"].as_str().unwrap_or("unknown").to_string());
    (v, error)
}

/// The AADSTS code of an Entra error answer (else its `error`).
fn code_of(v: &serde_json::Value, error: &str) -> String {
    v["error_codes"][0].as_u64().map(|c| format!("AADSTS{c}")).unwrap_or_else(|| error.to_string())
}

impl SignIns {
    /// Starts the device code sign-in of `username`, an integration user of `integration`
    /// of `registry`: answers the code to show; the polling goes on in the background
    /// ([`SignIns::get`] says how it stands).
    pub async fn start(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        integration: &str,
        username: &str,
    ) -> Result<SignIn, RegistryError> {
        // One sign-in at a time per user: asked again while one waits, the same code.
        if let Some(p @ SignIn::Pending { .. }) = self.get(integration, username) {
            return Ok(p);
        }
        let entry = registry.entry(integration).ok_or_else(|| RegistryError::NotFound(integration.into()))?;
        let Some(user) = entry.config.users.iter().find(|u| u.username.eq_ignore_ascii_case(username)) else {
            return Err(RegistryError::NotFound(format!("{integration}/{username}")));
        };
        let (client_id, secret) = registry.client_of(&entry.config);
        let login = registry.login_base_url().to_string();
        let tenant = entry.config.tenant_id.clone();
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &client_id)
            .append_pair("scope", SCOPE)
            .finish();
        let r = post_form(registry, &format!("{login}/{tenant}/oauth2/v2.0/devicecode"), form)
            .await
            .map_err(|e| RegistryError::Start(integration.into(), format!("device code request: {e}")))?;
        let (v, error) = answer(&r);
        if let Some(error) = error {
            let detail = v["error_description"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string();
            return Err(RegistryError::Start(integration.into(), format!("{}: {detail}", code_of(&v, &error))));
        }
        let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let pending = SignIn::Pending {
            user_code: text("user_code"),
            verification_uri: text("verification_uri"),
            message: text("message"),
        };
        let device_code = text("device_code");
        let interval = Duration::from_secs(v["interval"].as_u64().unwrap_or(5).max(1));
        let expires = std::time::Instant::now() + Duration::from_secs(v["expires_in"].as_u64().unwrap_or(900));
        let username = user.username.clone();
        self.set(integration, &username, pending.clone());
        let (me, registry, integration) = (self.clone(), registry.clone(), integration.to_string());
        tokio::spawn(async move {
            let outcome = poll_device_code(
                &registry,
                &integration,
                &tenant,
                &client_id,
                &secret,
                &device_code,
                interval,
                expires,
            )
            .await;
            let state = match outcome {
                Ok(refresh) => {
                    let sealed = registry
                        .kek()
                        .seal(&crate::imports::credentials::place(&integration, &username), refresh.as_bytes());
                    match registry.store().put_credential(&integration, &username, &sealed) {
                        Ok(()) => {
                            tracing::info!(integration = %integration, user = %username, "signed in with a device code");
                            if let Err(e) = registry.restart(&integration).await {
                                tracing::warn!(integration = %integration, "could not restart it after the sign-in: {e}");
                            }
                            SignIn::SignedIn
                        }
                        Err(e) => SignIn::Failed { code: "state-write-failed".into(), detail: e.to_string() },
                    }
                }
                Err((code, detail)) => {
                    tracing::warn!(integration = %integration, user = %username, %code, "device code sign-in failed");
                    SignIn::Failed { code, detail }
                }
            };
            me.set(&integration, &username, state);
        });
        Ok(pending)
    }
}

/// Polls the token endpoint until the user signed in (the refresh token), declined, or the
/// code expired.
#[allow(clippy::too_many_arguments)]
async fn poll_device_code(
    registry: &Registry,
    integration: &str,
    tenant: &str,
    client_id: &str,
    secret: &str,
    device_code: &str,
    mut interval: Duration,
    expires: std::time::Instant,
) -> Result<String, (String, String)> {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", registry.login_base_url());
    loop {
        tokio::time::sleep(interval).await;
        if std::time::Instant::now() >= expires {
            return Err(("expired_token".into(), "the code expired before the user signed in".into()));
        }
        if registry.entry(integration).is_none() {
            return Err(("deleted".into(), "the integration was deleted".into()));
        }
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret)
            .append_pair("device_code", device_code)
            .finish();
        let r = match post_form(registry, &url, form).await {
            Ok(r) => r,
            // The network: try again at the next interval.
            Err(e) => {
                tracing::warn!(integration = %integration, "device code poll failed: {e}");
                continue;
            }
        };
        let (v, error) = answer(&r);
        match error.as_deref() {
            None => {
                return v["refresh_token"].as_str().map(str::to_owned).ok_or_else(|| {
                    ("no-refresh-token".into(), "Entra gave no refresh token (offline_access refused?)".into())
                });
            }
            Some("authorization_pending") => {}
            Some("slow_down") => interval = (interval + Duration::from_secs(5)).min(MAX_INTERVAL),
            Some(e) => {
                let detail = v["error_description"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string();
                return Err((code_of(&v, e), detail));
            }
        }
    }
}

async fn post_form(registry: &Registry, url: &str, form: String) -> Result<crate::http::Response, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    let req = OutboundRequest {
        method: "POST".into(),
        url,
        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
        body: form.into_bytes(),
        timeout: Duration::from_secs(30),
        max_response_bytes: 1 << 20,
    };
    registry.http().send(req).await.map_err(|e| format!("{e:?}"))
}
