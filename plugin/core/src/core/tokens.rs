//! Token answers: the app's (client credentials) and each integration user's (ROPC, or the
//! refresh token the host keeps for a user signed in with the device code flow, for MFA).
//! A refusal is kept with its AADSTS code for the status, and retried with backoff.

use super::*;

impl Core {
    /// The app token's answer.
    pub(super) fn on_app_token(&mut self, outcome: Result<HttpResponse, HttpError>, now: u64, jitter: u8) {
        let t = &mut self.app_token;
        match parse_token(&outcome, now) {
            Ok(state) => {
                t.state = state;
                t.retry.succeed();
            }
            Err((p, retry_after)) => {
                self.log(Level::Error, "app token refused", vec![("code".into(), p.code.clone())]);
                let t = &mut self.app_token;
                t.state = TokenState::Failed(p);
                t.retry.fail(now, retry_after, jitter);
            }
        }
    }

    /// An integration user's token answer.
    pub(super) fn on_user_token(
        &mut self,
        settings: &Settings,
        slot: usize,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        match parse_token(&outcome, now) {
            Ok(state) => {
                self.user_tokens[slot].state = state;
                self.user_tokens[slot].retry.succeed();
                // A refresh spends its token: the host keeps the one that came back.
                let user = &settings.integration_users[slot];
                if let Ok(r) = &outcome
                    && let Some(token) = serde_json::from_slice::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("refresh_token").and_then(|t| t.as_str()).map(str::to_owned))
                {
                    self.effects.push(Effect::KeepRefreshToken { username: user.username.clone(), token });
                }
            }
            Err((p, retry_after)) => {
                self.log(
                    Level::Error,
                    "integration user token refused",
                    vec![
                        ("user".into(), settings.integration_users[slot].username.clone()),
                        ("code".into(), p.code.clone()),
                    ],
                );
                self.user_tokens[slot].state = TokenState::Failed(p);
                self.user_tokens[slot].retry.fail(now, retry_after, jitter);
            }
        }
    }
}

/// A token request: the app's (`user` none), or an integration user's: with `refresh` (the
/// refresh token the host keeps for a user signed in with the device code flow) when there is
/// one, else with its password.
pub(super) fn token_request(s: &Settings, user: Option<&IntegrationUser>, refresh: Option<&str>) -> HttpRequest {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("client_id", &s.client_id);
    form.append_pair("client_secret", &s.client_secret);
    match user {
        None => {
            form.append_pair("grant_type", "client_credentials");
            form.append_pair("scope", "https://graph.microsoft.com/.default");
        }
        Some(_) if refresh.is_some() => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("scope", "https://graph.microsoft.com/Presence.Read.All offline_access");
            form.append_pair("refresh_token", refresh.unwrap_or_default());
        }
        Some(u) => {
            form.append_pair("grant_type", "password");
            form.append_pair("scope", "https://graph.microsoft.com/Presence.Read.All");
            form.append_pair("username", &u.username);
            form.append_pair("password", &u.password);
        }
    }
    // A path segment: RFC 3986's unreserved characters stay as they are (a GUID or a domain
    // name goes out verbatim), anything else is escaped.
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let tenant = percent_encoding::utf8_percent_encode(s.tenant_id.trim(), SEGMENT);
    HttpRequest {
        method: "POST".into(),
        url: format!("{}/{tenant}/oauth2/v2.0/token", s.login_base_url),
        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
        body: form.finish().into_bytes(),
    }
}

pub(super) fn parse_token(
    outcome: &Result<HttpResponse, HttpError>,
    now: u64,
) -> Result<TokenState, (Problem, Option<u64>)> {
    #[derive(serde::Deserialize)]
    struct Ok_ {
        access_token: String,
        expires_in: serde_json::Value,
    }
    match outcome {
        Ok(r) if r.status == 200 => {
            let t: Ok_ = serde_json::from_slice(&r.body)
                .map_err(|e| (problem("malformed-response", format!("token endpoint: {e}")), None))?;
            // `expires_in` varies (60-90 minutes, or hours with CAE) and is sometimes a string.
            let secs = match &t.expires_in {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(300);
            // Refresh 5 minutes early, or at 80 % for short lifetimes.
            let early = (secs / 5).min(300);
            Ok(TokenState::Valid { access: t.access_token, refresh_at: now + (secs - early) * 1000 })
        }
        Ok(r) => Err((hints::from_token_error(r.status, &r.body, "token"), retry_after(r))),
        Err(e) => Err((problem("network", format!("token endpoint: {e}")), None)),
    }
}
