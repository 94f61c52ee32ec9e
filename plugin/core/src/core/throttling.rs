//! Rules that hold for every answer of Graph and Entra, whatever asked: a `Retry-After` on
//! 429/503/504 holds back every request of that service (Microsoft's throttling guidance,
//! <https://learn.microsoft.com/en-us/graph/throttling>), and a 401 means the token was refused,
//! so it is fetched anew before the next request.

use super::*;

impl Core {
    /// Applies the rules above to one answer, before its own concern handles it.
    pub(super) fn note_answer(&mut self, pending: &Pending, outcome: &Result<HttpResponse, HttpError>, now: u64) {
        if let Some(scope) = Scope::of(pending)
            && let Some(n) = self.scope_busy.get_mut(&scope)
        {
            *n = n.saturating_sub(1);
        }
        if let (Some(scope), Ok(r)) = (Scope::of(pending), outcome)
            && matches!(r.status, 429 | 503 | 504)
            && let Some(ra) = retry_after(r)
        {
            let until = self.throttled_until.entry(scope).or_default();
            *until = (*until).max(now + ra);
            self.count(&format!("throttled.{}", scope.name()));
        }
        // A 401 means Graph refused the token: forget it so the next drive fetches a new one.
        if matches!(outcome, Ok(r) if r.status == 401) {
            match pending {
                Pending::UsersPage | Pending::GroupMembers => self.app_token.state = TokenState::Empty,
                Pending::CreateSub { slot, .. }
                | Pending::RenewSub(slot)
                | Pending::DeleteSub(slot)
                | Pending::ListSubs(slot)
                | Pending::CleanupDelete(slot)
                | Pending::VerifySub(slot)
                | Pending::Presences(slot) => self.user_tokens[*slot].state = TokenState::Empty,
                Pending::Push(_) | Pending::Absence(..) | Pending::Poll(_) => self.app_token.state = TokenState::Empty,
                Pending::AppToken | Pending::UserToken(_) | Pending::OpenIdConfig | Pending::Jwks => {}
            }
        }
    }
}

pub(super) fn retry_after(r: &HttpResponse) -> Option<u64> {
    r.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(|s| s * 1000)
}
