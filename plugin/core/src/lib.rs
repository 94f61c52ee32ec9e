//! # presence-core
//!
//! The sans-IO sync core of teams-presence-sync. It performs no I/O: it takes the time and
//! events as arguments (through [`Env`] and the `on_*` methods) and returns what to do as
//! [`Effect`] values (HTTP requests to start, presences to publish, state to persist, log
//! records). The component crate (`plugin/component`) turns it into a WebAssembly component;
//! unit tests drive it natively with fakes.
//!
//! ## Layout
//! - [`model`]: data types mirroring the WIT contract.
//! - [`core`]: the state machine ([`Core`]): tokens, directory, shards, subscriptions,
//!   notifications, status.
//! - [`mapping`]: Microsoft user ↔ switchboard user by email, with conflicts.
//! - [`shards`]: stable assignment of users to integration users (650 each).
//! - [`crypto`]: decryption of rich notifications (HMAC-SHA256, then AES-CBC).
//! - [`hints`]: AADSTS and Graph error codes → one-line admin hints.
//! - [`bytes`]: byte comparison a word at a time (the component's `memcmp`).

pub mod bytes;
pub mod core;
pub mod crypto;
pub mod hints;
pub mod jwt;
pub mod mapping;
pub mod model;
pub mod shards;

pub use crate::core::{
    Core, MAX_USERS_PAGE, MappingCounts, MatchedBy, RetireProgress, Unmatched, UserRow, UsersFilter, UsersPage,
    UsersQuery,
};
pub use crate::model::*;

#[cfg(test)]
mod core_tests;
