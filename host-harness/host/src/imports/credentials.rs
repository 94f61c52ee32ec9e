//! `credentials`: the refresh tokens the host keeps for integration users signed in with the
//! device code flow (MFA), sealed at rest under the KEK ([`crate::signin`] stores the first).

use crate::bindings::credentials;
use crate::instance::HostState;

/// The longest refresh token taken from the plugin.
pub const MAX_REFRESH_TOKEN: usize = 16 << 10;

/// Where an integration user's refresh token is sealed (its AEAD's associated data).
pub(crate) fn place(integration: &str, username: &str) -> String {
    format!("credential/{integration}/{}", username.to_lowercase())
}

impl credentials::Host for HostState {
    fn refresh_token(&mut self, username: String) -> Option<String> {
        let ctx = &self.ctx;
        let sealed = match ctx.store.credential(&ctx.name, &username) {
            Ok(s) => s?,
            Err(e) => {
                tracing::error!(integration = %ctx.name, "reading a refresh token failed: {e}");
                return None;
            }
        };
        let plain = ctx.kek.open(&place(&ctx.name, &username), &sealed).ok()?;
        String::from_utf8(plain).ok()
    }

    fn keep_refresh_token(&mut self, username: String, token: String) {
        let ctx = &self.ctx;
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN || username.len() > 512 {
            ctx.count("rejected.refresh-token");
            return;
        }
        // Only for an integration user that signed in with the device code flow.
        if !matches!(ctx.store.credential(&ctx.name, &username), Ok(Some(_))) {
            ctx.count("rejected.refresh-token");
            return;
        }
        let sealed = ctx.kek.seal(&place(&ctx.name, &username), token.as_bytes());
        if let Err(e) = ctx.store.put_credential(&ctx.name, &username, &sealed) {
            tracing::error!(integration = %ctx.name, "keeping a refresh token failed: {e}; the user must sign in again");
        }
    }
}
