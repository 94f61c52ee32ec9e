//! The benchmark suite (`host-harness bench`): measures, side by side in one run, what the
//! product does against the limits of the machine, and writes BENCHMARKS.md.
//!
//! Figures (each the median of several runs), after a table of the goals each one meets:
//! - time from start to "every user synced" against the emulator, by tenant size;
//! - switchboard users who come and go: one request of many changes until every changed user
//!   is shown and covered;
//! - processing latency (webhook POST → switchboard) at fixed rates, open loop;
//! - webhook ingest through the full harness (HTTP → component → switchboard) next to the
//!   machine's native RSA-OAEP-2048 decrypt rate (the ceiling: one per notification) and a
//!   bare server that only answers 202;
//! - line event → setPresence latency;
//! - plugin load: compile vs the compile cache vs instantiate;
//! - hot-swap pause under a stream of notifications;
//! - cost per notification, component vs the same core compiled natively;
//! - Graph requests per 1,000 users per hour at steady state;
//! - polling-only mode next to subscriptions: requests per 1,000 users per hour, staleness;
//! - memory: the host process's RSS and each instance's linear memory;
//! - a forged flood: handshake, status and a genuine change under it; the inbox commit's cost;
//! - several hosts on PostgreSQL: one host on PostgreSQL next to SQLite, the fleet's total
//!   with 1, 2 and 3 hosts, the takeover after a host loss, and a simulation of the lease
//!   keepers of 10,000 small integrations on 4 hosts.
//!
//! ## Layout
//! One module per section (`sync`, `directory`, `latency`, `flood`, `ingest`, `line`, `swap` (plugin load and the
//! swap pause), `cost`, `steady`, `memory`, `fleet`), what they share in `common`, and `report`, which
//! runs the chosen sections and writes the report with its goals table.

mod activation;
mod common;
mod cost;
mod directory;
mod fleet;
mod flood;
mod ingest;
mod latency;
mod line;
mod memory;
mod polling;
mod report;
mod steady;
mod swap;
mod sync;

pub use report::run;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs per figure (the median is reported).
    pub runs: usize,
    /// Tenant sizes for the sync-time figure.
    pub sync_sizes: Vec<usize>,
    /// Tenant sizes for the activation-after-Save figure.
    pub activation_sizes: Vec<usize>,
    /// Switchboard sizes and changes in one request, for the directory figure.
    pub directory_rounds: Vec<(usize, usize)>,
    /// Notifications per ingest run.
    pub notifications: usize,
    /// Calls per latency run.
    pub calls: usize,
    /// Presence changes per second during the hot-swap figure.
    pub swap_rate: usize,
    /// Seconds of the hot-swap figure.
    pub swap_seconds: usize,
    /// Tenant sizes for the steady-state request figure.
    pub steady_sizes: Vec<usize>,
    /// Tenant sizes, changes and seconds of the polling figure.
    pub polling: (Vec<usize>, usize, u64),
    /// Notifications per cost-per-notification run.
    pub cost_notifications: usize,
    /// Rates (notifications a second) of the latency figure.
    pub latency_rates: Vec<usize>,
    /// Rates of the latency figure relative to the one-core RSA rate measured in the same run,
    /// in percent.
    pub latency_relative: Vec<usize>,
    /// Seconds per latency run.
    pub latency_seconds: usize,
    /// Tenant sizes of the memory figure (one integration each).
    pub memory_sizes: Vec<usize>,
    /// The many-integrations memory figure: integrations, users each.
    pub memory_fleet: (usize, usize),
    /// Forging clients of the flood figure.
    pub flood_clients: usize,
    /// Samples of the flood figure (each: a handshake, a status, a genuine change).
    pub flood_samples: usize,
    /// Commits per mode of the inbox commit figure.
    pub commits: usize,
    /// Notifications of the fleet figure (spread over 1, 2 and 3 hosts).
    pub fleet_notifications: usize,
    /// Rate and seconds of the one-host latency figure, SQLite next to PostgreSQL.
    pub fleet_latency: (usize, usize),
    /// The lease simulation: integrations, seconds of steady state (4 hosts).
    pub sim: (usize, u64),
    /// Only these sections (all when empty): see [`SECTIONS`].
    pub only: Vec<String>,
}

/// The sections of the suite, in the order they run.
pub const SECTIONS: [&str; 14] = [
    "sync",
    "activation",
    "directory",
    "latency",
    "flood",
    "ingest",
    "line",
    "load",
    "swap",
    "cost",
    "steady",
    "polling",
    "memory",
    "fleet",
];

impl BenchOptions {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
    /// The full suite.
    pub fn full() -> Self {
        BenchOptions {
            runs: 3,
            sync_sizes: vec![1_000, 10_000, 100_000],
            activation_sizes: vec![10_000],
            directory_rounds: vec![(10_000, 1_000), (100_000, 1_000)],
            notifications: 8_000,
            calls: 300,
            swap_rate: 1000,
            swap_seconds: 6,
            steady_sizes: vec![1_000, 10_000],
            polling: (vec![1_000, 10_000], 200, 20),
            cost_notifications: 2_000,
            latency_rates: vec![500, 1000, 2000],
            latency_relative: vec![40, 80],
            latency_seconds: 4,
            memory_sizes: vec![10_000, 100_000],
            memory_fleet: (100, 1000),
            flood_clients: 8,
            flood_samples: 5,
            commits: 2000,
            fleet_notifications: 3000,
            fleet_latency: (500, 4),
            sim: (10_000, 20),
            only: vec![],
        }
    }
    /// A tiny smoke run that only proves the suite still works (CI).
    pub fn smoke() -> Self {
        BenchOptions {
            runs: 1,
            sync_sizes: vec![200],
            activation_sizes: vec![200],
            directory_rounds: vec![(200, 20)],
            notifications: 100,
            calls: 10,
            swap_rate: 100,
            swap_seconds: 1,
            steady_sizes: vec![200],
            polling: (vec![200], 10, 2),
            cost_notifications: 50,
            latency_rates: vec![100],
            latency_relative: vec![5],
            latency_seconds: 1,
            memory_sizes: vec![200],
            memory_fleet: (2, 100),
            flood_clients: 2,
            flood_samples: 1,
            commits: 50,
            fleet_notifications: 60,
            fleet_latency: (100, 1),
            sim: (40, 3),
            only: vec![],
        }
    }
}
