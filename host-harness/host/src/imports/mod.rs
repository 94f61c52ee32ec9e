//! The host side of every WIT import, one file per interface. Each checks what crosses the
//! boundary against the sandbox's caps, then delegates to the integration's backend (its
//! switchboard, state store, HTTP client, clock or key).

mod clock;
pub(crate) mod credentials;
mod crypto;
mod directory;
mod log;
mod notes;
pub(crate) mod outbound_http;
mod presence;
mod scheduler;
mod state;

use crate::bindings::{status, types};
use crate::instance::HostState;

impl types::Host for HostState {}
impl status::Host for HostState {}
