//! End-to-end tests: the real plugin component, hosted by the harness, against the Graph/Entra
//! emulator, all in-process on loopback. One test binary, one module per feature.

mod admin_page;
mod alerts;
mod bad_input;
mod capacity;
mod chaos;
mod config_file;
mod custom_switchboard;
mod directory;
mod fleet;
mod hot_swap;
mod integrations_api;
mod lifecycle;
mod mfa_sign_in;
mod notes;
mod operations;
mod policy;
mod polling;
mod presence_sync;
mod process_kill;
mod push;
mod reconcile;
mod restart;
mod sandbox;
mod security;
mod switchboard_changes;
mod trap;
mod users_list;
