//! # presence-host
//!
//! The host a switchboard platform embeds to run the teams-presence-sync plugin: one sandboxed
//! WebAssembly instance per integration (Microsoft tenant), the durable webhook inbox, the
//! notification keys, hot swap, and an HTTP API in front of them. The platform plugs in its
//! switchboard, and may plug in its own state store and HTTP client, through the backend
//! traits of [`Backends`].
//!
//! ```no_run
//! # async fn run(config: presence_host::Config, plugin: &[u8],
//! #     switchboards: std::collections::BTreeMap<String, std::sync::Arc<dyn presence_host::Switchboard>>)
//! #     -> anyhow::Result<()> {
//! use presence_host::{Backends, Host};
//! let backends = Backends::defaults(&config, switchboards)?;
//! let mut host = Host::start(&config, plugin, backends).await?;
//! let public = tokio::net::TcpListener::bind(&config.host.listen).await?;
//! let admin = tokio::net::TcpListener::bind(&config.host.admin_listen).await?;
//! host.serve(public, admin, axum::Router::new())?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! The seams a platform implements (each has a default or a workshop implementation):
//! - [`switchboard`]: the [`Switchboard`] trait: the platform's users and operator console.
//! - [`store`]: the [`StateStore`] trait (plugin key-value state, durable inbox, keys,
//!   swapped releases) and its default, [`SqliteStore`].
//! - [`http`]: the [`HttpClient`] trait and its default, [`ReqwestClient`].
//! - [`clock`]: the [`Clock`] trait and [`SystemClock`].
//!
//! Running the plugin, from the outside in:
//! - [`host`]: [`Host`]: starts the integrations on their backends; [`api`]: its routes,
//!   public (Graph's webhooks) and admin (behind the token); [`admin_api`]: the integrations
//!   API; [`ui`]: the admin page (sessions, CSRF); [`listener`]: serving them within
//!   connection and time limits, with optional TLS.
//! - `web.rs`: what those routes share (their state, bounded body reads).
//! - [`signin`]: the device code sign-in of integration users who must use MFA.
//! - [`registry`]: [`Registry`], the integrations a host runs, created, changed and deleted
//!   at run time, and which of the file and the admin API wins.
//! - [`integration`]: [`IntegrationHandle`], what the host and the platform call.
//! - `command.rs`: what an actor is asked to do; `actor.rs`: one task per integration that
//!   owns the instance, serves its bounded queue and takes the inbox's rows in order;
//!   `swap.rs`: hot swap between two commands; `inbox.rs`: the durable inbox's host side
//!   (envelope check, accept, replay, offering a batch; the actor takes the rows in order).
//! - [`engine`]: the wasmtime engine and linker; [`release`]: checked, compiled, cached
//!   plugin releases; `instance.rs`: the per-instance store state; `context.rs`: what an
//!   integration's instances share.
//! - `imports/`: one file per WIT import, each delegating to a backend.
//! - [`bindings`]: the only `bindgen!` of the host.
//! - [`sandbox`]: every limit (CPU per call, memory, size caps, log allowance);
//!   [`allow_list`]: where the plugin may send requests.
//! - [`lease`]: several hosts on one PostgreSQL database, each integration run by the host
//!   that holds its lease (fencing, balance, failover).
//! - [`keys`]: the per-integration RSA key; [`seal`]: sealing keys, plugin state and inbox
//!   rows at rest under the key-encryption key; [`status`]: what the admin sees;
//!   [`config`]: the TOML configuration; [`error`]: typed errors and [`SwapOutcome`].

mod actor;
pub mod admin_api;
pub mod alerts;
pub mod allow_list;
pub mod api;
pub mod bindings;
pub mod clock;
mod command;
pub mod config;
pub mod context;
pub mod engine;
pub mod error;
pub mod host;
pub mod http;
mod imports;
pub mod inbox;
mod instance;
pub mod integration;
pub mod keys;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod release;
pub mod sandbox;
pub mod seal;
pub mod signin;
pub mod status;
pub mod store;
mod swap;
pub mod switchboard;
pub mod ui;
pub mod unwrap;
mod web;

pub use bindings::WIT_VERSION;
pub use clock::{Clock, SystemClock};
pub use config::Config;
pub use error::{LineEventError, OverrideError, Stopping, StoreError};
pub use host::{Backends, Host};
pub use http::{HttpClient, ReqwestClient};
pub use integration::IntegrationHandle;
pub use registry::Registry;
pub use status::{StatusView, SwapOutcome, SwapReport};
pub use store::{InboxDeleted, InboxDone, InboxRow, PgStore, SqliteStore, StateStore};
pub use switchboard::{Fence, Switchboard, Switchboards};
