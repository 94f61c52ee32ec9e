//! The sandbox policy every plugin instance runs under: the CPU bound per guest call, the
//! memory meter and cap, the size caps on everything that crosses the boundary, the log
//! allowance and the kept tail of the guest's stderr.
//!
//! Each limit is enforced where the value crosses: the caps in the import that takes it
//! (`imports/`), the CPU bound by the epoch callback that [`crate::engine`] installs, the
//! memory cap by [`MemoryMeter`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Epoch ticks happen every this many milliseconds.
pub const EPOCH_TICK_MS: u64 = 10;
/// Default CPU bound of one guest call: a runaway call is stopped within this, plus at most one
/// epoch tick. The plugin splits long work into steps below it. It was 100 ms: at 100,000
/// users on a 2-core VM the heaviest legitimate call (one presence read of 650 users, each
/// published) measured 38 to 99 ms of CPU, depending on what the other core ran, and some runs
/// trapped (BENCHMARKS.md shows the traps of each run).
pub const DEFAULT_CALL_DEADLINE_MS: u64 = 250;
/// Default memory cap per instance.
pub const MEMORY_LIMIT_BYTES: usize = 256 << 20;
/// Largest HTTP request or response body crossing the boundary (either way).
pub const MAX_HTTP_BODY: usize = 16 << 20;
/// Most headers on an outbound request.
pub const MAX_HTTP_HEADERS: usize = 64;
/// Largest outbound header (name plus value), in bytes.
pub const MAX_HTTP_HEADER_BYTES: usize = 16 << 10;
/// Longest outbound URL, in bytes.
pub const MAX_URL_BYTES: usize = 8 << 10;
/// Timeout of one outbound request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest state value (bytes); the integration's total is
/// [`crate::store::KV_QUOTA_BYTES`].
pub const MAX_STATE_VALUE: usize = 32 << 20;
/// Longest state key (bytes).
pub const MAX_STATE_KEY: usize = 512;
/// Longest string the plugin may put in a presence update (ids, availability, activity).
pub const MAX_PRESENCE_FIELD: usize = 256;
/// Most random bytes one `crypto.random-bytes` call returns.
pub const MAX_RANDOM_BYTES: u32 = 4096;
/// Largest webhook body the host reads; a larger request gets 400 without reaching the
/// plugin. Graph's notification batches are far smaller.
pub const MAX_WEBHOOK_BODY: usize = 4 << 20;
/// Log records a plugin may write at once.
pub const LOG_BURST: f64 = 200.0;
/// Log records a plugin may write per second, sustained.
pub const LOG_PER_SECOND: f64 = 50.0;
/// Longest log message forwarded (bytes); longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 2048;
/// Most key/value fields forwarded per log record.
pub const MAX_LOG_FIELDS: usize = 32;
/// How much of a guest's stderr is kept for the trap report.
pub const STDERR_TAIL: usize = 2048;

/// The sandbox limits of every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU bound of one guest call, in milliseconds.
    pub call_deadline_ms: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { call_deadline_ms: DEFAULT_CALL_DEADLINE_MS, memory_bytes: MEMORY_LIMIT_BYTES }
    }
}

/// The CPU bound of the calls an administrator asks for that read every switchboard user
/// (WIT `users.page` and `users.counts`): about 210 ms at 100,000 users on a 2-core VM
/// (BENCHMARKS.md), near the usual bound, and a trap would restart the instance for a page
/// of a list. They are asked for by hand, never on a timer.
pub const ADMIN_QUERY_DEADLINE_MS: u64 = 2_000;

/// A guest call's clocks, for the deadline check at every epoch tick.
pub struct CallClock {
    /// CPU time of the thread that runs the call (guest code and the host imports it calls)
    /// when it started. A call runs on one thread: nothing in it yields to the executor.
    pub cpu: Duration,
    /// When it started.
    pub wall: Instant,
    /// Stop at the first check (tests).
    pub force: bool,
    /// This call's own CPU bound, instead of the instance's (see [`ADMIN_QUERY_DEADLINE_MS`]).
    pub bound: Option<Duration>,
}

impl CallClock {
    /// A call starting now.
    pub fn start(force: bool) -> CallClock {
        CallClock { cpu: thread_cpu(), wall: Instant::now(), force, bound: None }
    }

    /// Whether the call has used up its bound: `cpu` of CPU time, or, whatever the CPU, ten
    /// times that in wall time (at least a second). CPU, not wall time, so that a busy machine
    /// does not stop a legitimate call that merely waited for a core.
    pub fn exceeded(&self, cpu: Duration) -> bool {
        let cpu = self.bound.unwrap_or(cpu).max(cpu);
        let wall = (cpu * 10).max(Duration::from_secs(1));
        self.force || thread_cpu().saturating_sub(self.cpu) >= cpu || self.wall.elapsed() >= wall
    }
}

/// CPU time used by the current thread.
pub fn thread_cpu() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

/// The store's limits ([`StoreLimits`]), and how much linear memory the instance holds: the
/// status reports it, since the limiter is the one place that sees every memory grow.
pub struct MemoryMeter {
    limits: StoreLimits,
    /// Linear memory in bytes, all memories of the instance.
    pub bytes: usize,
    /// The last grow allowed, taken back if it then failed.
    pending: usize,
}

impl MemoryMeter {
    /// The limits of one instance: `memory_bytes` of linear memory, 1 Mi table elements,
    /// 8 instances, 16 tables, 4 memories.
    pub fn new(memory_bytes: usize) -> MemoryMeter {
        MemoryMeter {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(1 << 20)
                .instances(8)
                .tables(16)
                .memories(4)
                // A failed memory.grow traps with a message that names memory, instead of an
                // allocation failure that ends in an anonymous `unreachable`.
                .trap_on_grow_failure(true)
                .build(),
            bytes: 0,
            pending: 0,
        }
    }
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allow = self.limits.memory_growing(current, desired, maximum)?;
        if allow {
            self.pending = desired.saturating_sub(current);
            self.bytes += self.pending;
        }
        Ok(allow)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.bytes -= std::mem::take(&mut self.pending);
        self.limits.memory_grow_failed(error)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A token bucket for the plugin's log records: a burst of [`LOG_BURST`], then
/// [`LOG_PER_SECOND`]; what is over it is dropped and counted.
pub struct LogBudget {
    tokens: f64,
    at: Instant,
    suppressed_since_report: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget { tokens: LOG_BURST, at: Instant::now(), suppressed_since_report: 0 }
    }
}

/// What the log allowance says of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Write it; this many records were dropped since the last one written.
    Write {
        /// Records dropped before this one.
        dropped_before: u64,
    },
    /// Drop it.
    Drop,
}

impl LogBudget {
    /// Takes one record from the allowance.
    pub fn take(&mut self) -> LogVerdict {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * LOG_PER_SECOND).min(LOG_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            self.suppressed_since_report += 1;
            return LogVerdict::Drop;
        }
        self.tokens -= 1.0;
        LogVerdict::Write { dropped_before: std::mem::take(&mut self.suppressed_since_report) }
    }
}

/// A guest's stderr: only the last [`STDERR_TAIL`] bytes are kept, whatever it writes.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>);

impl GuestStderr {
    /// The kept tail, as text, and empties it.
    pub fn take(&self) -> String {
        let bytes: Vec<u8> = self.0.lock().unwrap().drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestStderr {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut tail = self.0.lock().unwrap();
        tail.extend(buf.iter().rev().take(STDERR_TAIL).rev());
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `s` with every control character (a newline, an escape sequence, a Unicode line or
/// paragraph separator) written as an escape, so that a guest's string can never forge a log
/// line or drive a terminal.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// `s`, cut to at most `max` bytes (on a character boundary).
pub fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_allowance_is_a_burst_then_drops_and_reports_what_it_dropped() {
        let mut b = LogBudget::default();
        for _ in 0..LOG_BURST as usize {
            assert_eq!(b.take(), LogVerdict::Write { dropped_before: 0 });
        }
        assert_eq!(b.take(), LogVerdict::Drop);
        assert_eq!(b.take(), LogVerdict::Drop);
        b.at -= Duration::from_secs(1);
        assert_eq!(b.take(), LogVerdict::Write { dropped_before: 2 });
    }

    #[test]
    fn guest_strings_are_logged_printable() {
        assert_eq!(printable("alg\n2026-11-27T00:00:00Z ERROR forged"), "alg\\n2026-11-27T00:00:00Z ERROR forged");
        assert_eq!(printable("\u{1b}[31mred\r\u{2028}"), "\\u{1b}[31mred\\r\\u{2028}");
        assert_eq!(printable("Ünïcode stays, tabs do not\t"), "Ünïcode stays, tabs do not\\t");
    }

    #[test]
    fn cap_cuts_on_a_character_boundary() {
        assert_eq!(cap("abc".into(), 5), "abc");
        assert_eq!(cap("åäö".into(), 3), "å…");
    }

    #[test]
    fn stderr_keeps_only_its_tail() {
        use tokio::io::AsyncWriteExt;
        let s = GuestStderr::default();
        let mut w = s.clone();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            w.write_all(&vec![b'a'; STDERR_TAIL]).await.unwrap();
            w.write_all(b"the end").await.unwrap();
        });
        let t = s.take();
        assert_eq!(t.len(), STDERR_TAIL);
        assert!(t.ends_with("the end"));
        assert!(s.take().is_empty());
    }
}
