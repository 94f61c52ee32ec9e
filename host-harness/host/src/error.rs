//! Typed errors of the host's library boundary. Each says which integration and what failed;
//! the binaries add context with `anyhow`.

/// Why the state store could not do something (the host side of `state.state-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The integration's key-value quota is used up; the payload is the quota in bytes.
    #[error("the state quota of {0} bytes is used up")]
    Quota(u64),
    /// The storage failed; the payload says how. Nothing was written.
    #[error("state storage unavailable: {0}")]
    Unavailable(String),
    /// This host does not hold the integration's lease (another host runs it now): nothing
    /// was written. The payload is the integration.
    #[error("this host no longer holds the lease of integration {0}: another host runs it; nothing was written")]
    Fenced(String),
}

/// Why an integration did not take a line event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineEventError {
    /// The switchboard user is not mapped to a Microsoft user.
    #[error("switchboard user {0} is not mapped to a Microsoft user")]
    UnmappedUser(String),
    /// The switchboard user is passive (has no line).
    #[error("switchboard user {0} is passive (no line); passive users get no pushes")]
    PassiveUser(String),
    /// "Push line status to Teams" is off.
    #[error("\"Push line status to Teams\" is off for this integration")]
    PushDisabled,
    /// The integration is stopping.
    #[error("the integration is stopping")]
    Stopping,
}

/// Why an integration did not take a switchboard absence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbsenceError {
    /// The switchboard user is not mapped to a Microsoft user (or is outside the policy's
    /// scope).
    #[error("switchboard user {0} is not mapped to a Microsoft user")]
    UnmappedUser(String),
    /// The message is longer than Teams takes.
    #[error("the message has {0} characters; a Teams status message takes at most 280")]
    TooLong(u32),
    /// "Push line status to Teams" is off: nothing is written to Teams.
    #[error("\"Push line status to Teams\" is off for this integration")]
    PushDisabled,
    /// The integration's plugin has no `absence` export (built against WIT 3.4 or earlier).
    #[error("this integration's plugin does not take absences (it was built against WIT 3.4 or earlier)")]
    NotSupported,
    /// The integration is stopping.
    #[error("the integration is stopping")]
    Stopping,
}

/// Why overrides were not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// The plugin refused entry `index` (from 0) of the list.
    #[error("override {index}: {reason}")]
    InvalidEntry {
        /// Its position in the list.
        index: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The integration is stopping.
    #[error("the integration is stopping")]
    Stopping,
}

/// The integration's actor is gone (the host is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the integration is stopping")]
pub struct Stopping;

/// What came of a hot swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapOutcome {
    /// The new release runs.
    Switched,
    /// The new release did not configure; the old one carries on, on the state as it was.
    RolledBack,
    /// Nothing was tried (the state could not be backed up first).
    Refused,
}
