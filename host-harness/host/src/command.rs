//! [`Command`]: what an integration's actor is asked to do, one guest call each (but for a
//! swap, which is several).

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::bindings::{absence, outbound_http, policy, presence, sync};
use crate::error::{LineEventError, OverrideError};
use crate::release::Release;
use crate::status::{StatusView, SwapReport};

/// A command for an integration's actor.
pub enum Command {
    /// Notification batches wait in the durable inbox: take them, in order. Several wakes
    /// count as one (the actor pulls the rows itself).
    InboxWake,
    /// One batch from the inbox, offered to the plugin (the actor's own; never queued).
    Inbox(i64, Vec<u8>, u64),
    /// An outbound request finished.
    HttpDone(u64, Result<outbound_http::Response, outbound_http::HttpError>),
    /// The periodic timer, or a prompt tick the plugin asked for.
    Tick,
    /// "Sync now".
    SyncNow,
    /// A status query.
    Status(oneshot::Sender<StatusView>),
    /// Replace the API overrides.
    SetOverrides(Vec<sync::MappingOverride>, oneshot::Sender<Result<(), OverrideError>>),
    /// Read the API overrides.
    GetOverrides(oneshot::Sender<Vec<sync::MappingOverride>>),
    /// A line event.
    Line(presence::LineEvent, oneshot::Sender<Result<(), LineEventError>>),
    /// A switchboard absence starts, changes or ends.
    Absence(absence::AbsenceEvent, oneshot::Sender<Result<(), crate::error::AbsenceError>>),
    /// Retire the integration (it is being deleted): the progress, or `None` when the plugin
    /// cannot (it lacks the `admin` export).
    Retire(oneshot::Sender<Option<crate::status::Retirement>>),
    /// A page of the users list; `None` when the plugin cannot (no `users` export).
    UsersPage(crate::status::UsersQuery, oneshot::Sender<Option<crate::status::UsersPageView>>),
    /// The users by outcome; `None` when the plugin cannot.
    MappingCounts(oneshot::Sender<Option<crate::status::MappingCountsView>>),
    /// What a policy would do to the users in a call; `None` when the plugin cannot (no
    /// `policy` export); `Err`: the plugin refused the policy (`field: reason`).
    DryRun(policy::SyncPolicy, oneshot::Sender<Option<Result<Vec<crate::status::DryRunView>, String>>>),
    /// Switch to another plugin release (hot swap), with where to send the outcome.
    Swap(Arc<Release>, oneshot::Sender<SwapReport>),
    /// Make the next guest call hit its deadline at once (a real epoch-interruption trap):
    /// how tests show that a trap restarts only this integration's instance.
    InterruptNextCall,
    /// Stop the actor.
    Shutdown,
}

impl Command {
    /// The kind of call, as the status names it (`slowest_calls_ms`, `calls`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::InboxWake => "inbox-wake",
            Command::Inbox(..) => "inbox",
            Command::HttpDone(..) => "http-done",
            Command::Tick => "tick",
            Command::SyncNow => "sync-now",
            Command::Status(..) => "status",
            Command::SetOverrides(..) => "set-overrides",
            Command::GetOverrides(..) => "get-overrides",
            Command::Line(..) => "line-event",
            Command::Absence(..) => "absence",
            Command::Retire(..) => "retire",
            Command::UsersPage(..) => "users-page",
            Command::MappingCounts(..) => "mapping-counts",
            Command::DryRun(..) => "policy-dry-run",
            Command::Swap(..) => "swap",
            Command::InterruptNextCall => "interrupt-next-call",
            Command::Shutdown => "shutdown",
        }
    }
}
