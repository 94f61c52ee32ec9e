//! The core's heap through a first sync, natively: a profiling aid, not a check of any
//! figure (the goals are the component's linear memory, measured by the benchmarks).
//!
//! `cargo test --release -p presence-core --lib footprint -- --ignored --nocapture`
//! (`FP_USERS`, default 100,000; `FP_TRACE=1` prints the heap every 25 calls and every
//! allocation over 512 KiB). The directory has every field Entra gives, in pages of 999; what
//! is stored and published goes to the host in the component, so it is not kept here.
//!
//! Built for wasm32-wasip2 and run with the host crate's `wasi_command` example, it also
//! prints the linear memory (the guest's allocator never gives memory back, so holes count):
//! natively, pointers are twice as large and the allocator is another.
#![allow(unsafe_code)]

use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts the bytes allocated (all tests of this binary pay two relaxed atomics per call).
struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BIGGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        PEAK.fetch_max(NOW.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        BIGGEST.fetch_max(l.size(), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            PEAK.fetch_max(NOW.fetch_add(new - l.size(), Relaxed) + new - l.size(), Relaxed);
            BIGGEST.fetch_max(new, Relaxed);
        } else {
            NOW.fetch_sub(l.size() - new, Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The linear memory in MiB (0 natively).
fn linear() -> f64 {
    #[cfg(target_arch = "wasm32")]
    return std::arch::wasm32::memory_size(0) as f64 / 16.0;
    #[cfg(not(target_arch = "wasm32"))]
    0.0
}

#[test]
#[ignore = "a profiling aid: run it by name"]
fn footprint() {
    let users: usize = std::env::var("FP_USERS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let trace = std::env::var_os("FP_TRACE").is_some();
    let mut env = env(users);
    env.keep = false;
    let mib = |b: usize, base: usize| b.saturating_sub(base) as f64 / 1_048_576.0;
    let base = NOW.load(Relaxed);
    PEAK.store(base, Relaxed);
    BIGGEST.store(0, Relaxed);
    let mut core = Core::new();
    core.configure(&mut env, settings(users.div_ceil(650))).unwrap();
    let effects = core.take_effects();
    let mut last = std::time::Instant::now();
    let mut calls: Vec<(f64, usize)> = vec![];
    let mut peak_at = (0, 0);
    let (published, _) = run_graph_observed(&mut core, &mut env, users, effects, &mut |_, _| {
        let k = calls.len();
        calls.push((last.elapsed().as_secs_f64() * 1000.0, k));
        let peak = PEAK.load(Relaxed);
        if peak > peak_at.0 {
            peak_at = (peak, k);
        }
        let biggest = BIGGEST.swap(0, Relaxed);
        if trace && biggest > 1 << 19 {
            eprintln!("call {k}: an allocation of {:.1} MiB", mib(biggest, 0));
        }
        if trace && (k.is_multiple_of(25) || users <= 10_000) {
            eprintln!(
                "call {k}: {:.1} MiB, peak {:.1} MiB, linear {:.1}",
                mib(NOW.load(Relaxed), base),
                mib(peak, base),
                linear()
            );
        }
        last = std::time::Instant::now();
    });
    assert_eq!(published.len() + env.published_uncounted, users);
    let first = (NOW.load(Relaxed), PEAK.load(Relaxed));
    // A full resync (daily, or "Sync now"): the new directory is read beside the old one.
    PEAK.store(NOW.load(Relaxed), Relaxed);
    core.sync_now(&mut env);
    let effects = core.take_effects();
    let mut k = 0;
    run_graph_observed(&mut core, &mut env, users, effects, &mut |_, _| {
        k += 1;
        let biggest = BIGGEST.swap(0, Relaxed);
        if trace && biggest > 1 << 19 {
            eprintln!("resync call {k}: an allocation of {:.1} MiB", mib(biggest, 0));
        }
        if trace && k % 10 == 0 {
            eprintln!(
                "resync call {k}: {:.1} MiB, peak {:.1} MiB, linear {:.1}",
                mib(NOW.load(Relaxed), base),
                mib(PEAK.load(Relaxed), base),
                linear()
            );
        }
    });
    eprintln!(
        "{users} users, first sync: heap {:.1} MiB, peak {:.1} MiB; after a full resync: heap {:.1} MiB, its peak {:.1} MiB; linear {:.1} MiB",
        mib(first.0, base),
        mib(first.1, base),
        mib(NOW.load(Relaxed), base),
        mib(PEAK.load(Relaxed), base),
        linear()
    );
    calls.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!(
        "{users} users: heap {:.1} MiB, peak {:.1} MiB (call {} of {}); slowest calls (ms, call): {:?}",
        mib(NOW.load(Relaxed), base),
        mib(PEAK.load(Relaxed), base),
        peak_at.1,
        calls.len(),
        calls.iter().take(5).map(|(ms, k)| (format!("{ms:.1}"), *k)).collect::<Vec<_>>()
    );
}
