//! The durable webhook inbox, host side, all of it: Graph's notification batches are checked
//! for their envelope, written to the state store and acknowledged at once, and the actor is
//! woken ([`accept`]). The inbox is the queue of notifications: after every command the actor
//! pulls its rows, in order, [`STEP`] at a time (so other commands get their turn during a
//! flood; `Actor::take_inbox`), and [`offer`]s each to the plugin (`sync.on-notification`).
//! Rows a crash left are taken first ([`replay`]). A plugin that answers `retry-later` (it is
//! restoring its state) gets the same batch again after its next tick; no later batch passes
//! it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};
use wasmtime::Store;

use crate::bindings::sync;
use crate::command::Command;
use crate::context::IntegrationCtx;
use crate::error::StoreError;
use crate::instance::HostState;
use crate::store::{InboxDone, InboxEntry, InboxRow};

/// Rows the actor pulls from the inbox before it serves its queue again.
pub const STEP: usize = 64;

/// Why a notification body was not taken into the inbox.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The inbox holds its configured maximum: answer 503 with `Retry-After` (Graph retries).
    #[error("the inbox is full ({rows} rows, {bytes} bytes waiting)")]
    Full {
        /// Rows waiting.
        rows: u64,
        /// Bytes waiting.
        bytes: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where inbox rows are sealed.
fn place(ctx: &IntegrationCtx) -> String {
    row_place(&ctx.name)
}

/// Where the inbox rows of `integration` are sealed (any host of a fleet seals them alike).
pub(crate) fn row_place(integration: &str) -> String {
    format!("inbox/{integration}")
}

/// Persists a notification body for an integration another host runs (several hosts on one
/// database): sealed, within the inbox's bounds as the database counts them. The caller
/// then wakes the owner (`NOTIFY`).
pub(crate) fn accept_elsewhere(
    store: &dyn crate::store::StateStore,
    kek: &crate::seal::Kek,
    limits: crate::context::InboxLimits,
    name: &str,
    kind: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<(), AcceptError> {
    let sealed = kek.seal(&row_place(name), body);
    let (rows, bytes) = store.inbox_size(name)?;
    if rows + 1 > limits.rows || bytes + sealed.len() as u64 > limits.bytes {
        return Err(AcceptError::Full { rows, bytes });
    }
    store.inbox_push(name, kind, &sealed, now_ms)?;
    Ok(())
}

/// Another host put rows in the inbox: recounted from the store, and the actor woken.
pub(crate) fn arrived(ctx: &IntegrationCtx, tx: &mpsc::Sender<Command>) {
    if let Ok((rows, bytes)) = ctx.store.inbox_size(&ctx.name) {
        ctx.inbox_rows.store(rows, Ordering::SeqCst);
        ctx.inbox_bytes.store(bytes, Ordering::SeqCst);
    }
    wake(ctx, tx);
}

/// Persists a notification body, sealed (it survives a crash from here on, and its
/// clientState is not readable on disk), and wakes the actor. When this returns `Ok` the
/// caller may acknowledge it to Graph. Refused beyond the inbox's bounds. The store writes it
/// on a thread of its own ([`StateStore::inbox_push_then`]), else on the blocking pool; the
/// caller's worker does not wait for the disk, and the row is counted and the actor woken
/// even when the caller has gone meanwhile.
///
/// [`StateStore::inbox_push_then`]: crate::store::StateStore::inbox_push_then
pub(crate) async fn accept(
    ctx: &Arc<IntegrationCtx>,
    tx: &mpsc::Sender<Command>,
    kind: &str,
    body: &[u8],
) -> Result<(), AcceptError> {
    let sealed = ctx.kek.seal(&place(ctx), body);
    let len = sealed.len() as u64;
    // Reserve the room first, so concurrent requests cannot all pass the check.
    let rows = ctx.inbox_rows.fetch_add(1, Ordering::SeqCst) + 1;
    let bytes = ctx.inbox_bytes.fetch_add(len, Ordering::SeqCst) + len;
    if rows > ctx.inbox_limits.rows || bytes > ctx.inbox_limits.bytes {
        ctx.inbox_rows.fetch_sub(1, Ordering::SeqCst);
        ctx.inbox_bytes.fetch_sub(len, Ordering::SeqCst);
        ctx.count("rejected.inbox-full");
        return Err(AcceptError::Full { rows: rows - 1, bytes: bytes - len });
    }
    let (answer, answered) = oneshot::channel();
    let (c, t) = (ctx.clone(), tx.clone());
    let done: InboxDone = Box::new(move |r: Result<i64, StoreError>| {
        match &r {
            Ok(_) => {
                c.count("inbox.accepted");
                wake(&c, &t);
            }
            Err(_) => {
                c.inbox_rows.fetch_sub(1, Ordering::SeqCst);
                c.inbox_bytes.fetch_sub(len, Ordering::SeqCst);
            }
        }
        let _ = answer.send(r);
    });
    let row =
        InboxRow { integration: ctx.name.clone(), kind: kind.into(), body: sealed, received_ms: ctx.clock.now_ms() };
    if let Err((row, done)) = ctx.store.inbox_push_then(row, done) {
        let store = ctx.store.clone();
        tokio::task::spawn_blocking(move || {
            done(store.inbox_push(&row.integration, &row.kind, &row.body, row.received_ms));
        });
    }
    match answered.await {
        Ok(r) => r.map(|_| ()).map_err(AcceptError::from),
        Err(_) => Err(AcceptError::Store(StoreError::Unavailable("the inbox write was dropped".into()))),
    }
}

/// A row's body, opened; a row that does not open (damaged, or sealed under another KEK) is
/// counted and removed.
pub(crate) fn open(ctx: &IntegrationCtx, row: &InboxEntry) -> Option<Vec<u8>> {
    match ctx.kek.open(&place(ctx), &row.body) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(integration = %ctx.name, row = row.id, "inbox row dropped: {e}");
            ctx.count("inbox.unreadable");
            taken(ctx, &[(row.id, row.body.len() as u64)]);
            None
        }
    }
}

/// Rows wait in the inbox: the actor takes them after its current command (woken if idle).
pub(crate) fn wake(ctx: &IntegrationCtx, tx: &mpsc::Sender<Command>) {
    if !ctx.inbox_waiting.swap(true, Ordering::SeqCst) {
        // A full queue means a busy actor, which looks at the flag after every command.
        let _ = tx.try_send(Command::InboxWake);
    }
}

/// At an integration's start: the rows a crash left wait, and are taken first.
pub(crate) fn replay(ctx: &IntegrationCtx) -> Result<(), StoreError> {
    let (waiting, bytes) = ctx.store.inbox_size(&ctx.name)?;
    ctx.inbox_rows.store(waiting, Ordering::SeqCst);
    ctx.inbox_bytes.store(bytes, Ordering::SeqCst);
    ctx.count_by("inbox.replayed", waiting);
    if waiting > 0 {
        ctx.inbox_waiting.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// What came of offering a batch.
pub(crate) enum Offered {
    /// The plugin took it (or trapped on it: it would again, and one poisonous body must not
    /// loop): remove it from the inbox with [`taken`].
    Taken(i64, u64),
    /// The plugin is restoring its state: the batch stays in the inbox, first in line.
    Deferred,
}

/// Offers a batch from the inbox to the plugin. The inbox row is not touched here, so that
/// the guest call's cost is the plugin's alone.
pub(crate) async fn offer(
    store: &mut Store<HostState>,
    sync: &sync::Guest,
    ctx: &IntegrationCtx,
    id: i64,
    body: Vec<u8>,
    stored: u64,
) -> (Offered, Result<(), wasmtime::Error>) {
    match sync.call_on_notification(&mut *store, &body).await {
        Ok(sync::NotificationOutcome::RetryLater) => {
            ctx.count("inbox.deferred");
            (Offered::Deferred, Ok(()))
        }
        Ok(sync::NotificationOutcome::Taken) => (Offered::Taken(id, stored), Ok(())),
        Err(e) => (Offered::Taken(id, stored), Err(e)),
    }
}

/// Removes the batches the plugin took from the inbox, in one commit (`rows`: their ids and
/// their bytes there). A crash before it only replays batches the plugin has seen: it drops
/// them by their sequence numbers. Answers whether they are gone.
pub(crate) fn taken(ctx: &IntegrationCtx, rows: &[(i64, u64)]) -> bool {
    if rows.is_empty() {
        return true;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let gone = deleted(&ctx.name, ctx.store.inbox_delete_many(&ids));
    processed(ctx, rows);
    gone
}

/// [`taken`] without waiting for the store where it has a path of its own
/// ([`crate::store::StateStore::inbox_delete_then`]; else here and now): `then` is told
/// whether the rows are gone, on the store's thread.
pub(crate) fn taken_then(ctx: &IntegrationCtx, rows: &[(i64, u64)], then: impl FnOnce(bool) + Send + 'static) {
    if rows.is_empty() {
        return then(true);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let name = ctx.name.clone();
    let done: crate::store::InboxDeleted = Box::new(move |r| then(deleted(&name, r)));
    if let Err((ids, done)) = ctx.store.inbox_delete_then(ids, done) {
        done(ctx.store.inbox_delete_many(&ids));
    }
    processed(ctx, rows);
}

/// The deletes of an actor's taken rows that the store has not done yet ([`taken_then`]).
/// Rows read while one is in flight may be among them: until none is, the actor's cursor
/// stays past the rows it took.
#[derive(Default)]
pub(crate) struct Deletes {
    /// Handed to the store and not done.
    pending: std::sync::atomic::AtomicUsize,
    /// One was done since the cursor last went back to the inbox's start.
    done: std::sync::atomic::AtomicBool,
    /// The actor is in [`Deletes::start`]: a delete done meanwhile (at once, or on the
    /// store's thread before `start` returned) wakes nobody, as the actor looks at
    /// [`Deletes::rewind`] right after.
    starting: std::sync::atomic::AtomicBool,
}

impl Deletes {
    /// Removes `rows` (see [`taken_then`]). When the last delete in flight is done on the
    /// store's thread, the actor is woken: the cursor may go back to the start.
    pub(crate) fn start(self: &Arc<Self>, ctx: &Arc<IntegrationCtx>, tx: &mpsc::Sender<Command>, rows: &[(i64, u64)]) {
        if rows.is_empty() {
            return;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.starting.store(true, Ordering::SeqCst);
        let (me, c, t) = (self.clone(), ctx.clone(), tx.clone());
        taken_then(ctx, rows, move |gone| {
            if gone {
                me.done.store(true, Ordering::SeqCst);
            }
            if me.pending.fetch_sub(1, Ordering::SeqCst) == 1 && !me.starting.load(Ordering::SeqCst) {
                wake(&c, &t);
            }
        });
        self.starting.store(false, Ordering::SeqCst);
    }

    /// Whether the cursor goes back to the inbox's start: rows were removed, and none is
    /// still being removed. An id is given when a row is written, not when it commits: on a
    /// store with several writers (PostgreSQL) a row can show up after one with a greater
    /// id was read, and a cursor past it would never see it.
    pub(crate) fn rewind(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0 && self.done.swap(false, Ordering::SeqCst)
    }
}

/// Whether a delete of taken rows worked (a failure is logged: the rows are offered again
/// later, and the plugin drops them by their sequence numbers).
fn deleted(integration: &str, r: Result<(), StoreError>) -> bool {
    r.inspect_err(|e| tracing::error!(%integration, "inbox delete failed: {e:#}")).is_ok()
}

/// Counts taken rows out of the inbox's bounds.
fn processed(ctx: &IntegrationCtx, rows: &[(i64, u64)]) {
    let n = rows.len() as u64;
    let bytes: u64 = rows.iter().map(|r| r.1).sum();
    let _ = ctx.inbox_rows.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| Some(x.saturating_sub(n)));
    let _ = ctx.inbox_bytes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| Some(x.saturating_sub(bytes)));
    ctx.count_by("inbox.processed", n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::CtxParts;
    use crate::switchboard::{PresenceUpdate, Switchboard, SwitchboardUser, UnknownUser};

    struct NoSwitchboard;
    impl Switchboard for NoSwitchboard {
        fn users_page(&self, _: usize, _: usize) -> Vec<SwitchboardUser> {
            Vec::new()
        }
        fn publish(&self, update: PresenceUpdate) -> Result<(), UnknownUser> {
            Err(UnknownUser(update.user_id))
        }
        fn withdraw(&self, _: &str) {}
        fn calls_in_progress(&self) -> Vec<crate::switchboard::LineEvent> {
            Vec::new()
        }
    }

    struct NoHttp;
    impl crate::http::HttpClient for NoHttp {
        fn send(&self, _: crate::http::OutboundRequest) -> crate::http::HttpFuture {
            Box::pin(async { Err(crate::http::HttpError::InvalidRequest("no network in this test".into())) })
        }
    }

    fn ctx(store: Arc<dyn crate::store::StateStore>) -> Arc<IntegrationCtx> {
        let (key, _) = crate::keys::NotificationKey::for_tests("cert");
        Arc::new(IntegrationCtx::new(
            "contoso".into(),
            Vec::new(),
            Arc::new(NoHttp),
            store,
            Arc::new(NoSwitchboard),
            Arc::new(key),
            Arc::new(crate::clock::SystemClock),
            Box::new(|_, _| Box::pin(async { false })),
            CtxParts {
                kek: crate::seal::Kek::random(),
                webhook_token: "t".into(),
                inbox_limits: Default::default(),
                metrics: crate::metrics::Metrics::default().for_integration("contoso"),
                client_secret_expires_ms: None,
            },
        ))
    }

    /// A webhook whose request is dropped while its row is being committed (Graph gave up,
    /// the connection broke): the row is still stored, counted and the actor woken, for the
    /// store writes it on its own thread and tells the host there, not the caller.
    #[tokio::test]
    async fn a_row_whose_webhook_went_away_mid_commit_is_still_counted_and_wakes_the_actor() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SqliteStore::open(&tmp.path().join("state")).unwrap());
        let ctx = ctx(store.clone());
        let (tx, mut rx) = mpsc::channel(8);
        let body = br#"{"value": []}"#;
        // The store's writer is held up, so the request is still waiting when it is dropped.
        let held = store.hold_for_tests();
        let mut pending = Box::pin(accept(&ctx, &tx, "notifications", &body[..]));
        assert!(futures_util::FutureExt::now_or_never(pending.as_mut()).is_none(), "the row waits for its commit");
        drop(pending);
        assert_eq!(ctx.inbox_rows.load(Ordering::SeqCst), 1, "its room stays reserved");
        drop(held);
        // Bounded, so that a lost wake fails the test instead of hanging it.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv()).await;
        assert!(matches!(woken, Ok(Some(Command::InboxWake))), "the actor is woken");
        assert_eq!(ctx.counters().get("inbox.accepted").copied(), Some(1));
        let rows = ctx.store.inbox_after("contoso", 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(open(&ctx, &rows[0]).as_deref(), Some(&body[..]));
        assert_eq!(ctx.inbox_rows.load(Ordering::SeqCst), 1);
    }

    /// The actor hands the rows its plugin took to the store's writer and goes on: a commit
    /// in progress (the inbox writer's fsync) does not hold it. Until they are gone its cursor
    /// stays past them; once they are, it is woken and goes back to the inbox's start.
    #[tokio::test]
    async fn taken_rows_are_removed_without_holding_the_actor_and_the_cursor_goes_back_once_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SqliteStore::open(&tmp.path().join("state")).unwrap());
        let ctx = ctx(store.clone());
        let (tx, mut rx) = mpsc::channel(8);
        let ids: Vec<i64> =
            (0..3).map(|i| ctx.store.inbox_push("contoso", "notifications", &[i], 0).unwrap()).collect();
        let deletes = Arc::new(Deletes::default());
        let held = store.hold_for_tests();
        // On a thread of its own, bounded: a start that waited for the held connection would
        // fail the test instead of hanging it.
        let (started, returned) = std::sync::mpsc::channel();
        let (d, c, t, taken) = (deletes.clone(), ctx.clone(), tx.clone(), vec![(ids[0], 1), (ids[1], 1)]);
        std::thread::spawn(move || {
            d.start(&c, &t, &taken);
            started.send(d.rewind()).unwrap();
        });
        let rewound = returned.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(rewound, Ok(false), "start returned at once, and the rows are not gone yet");
        assert_eq!(ctx.counters().get("inbox.processed").copied(), Some(2));
        drop(held);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv()).await;
        assert!(matches!(woken, Ok(Some(Command::InboxWake))), "the actor is woken once they are gone");
        assert!(deletes.rewind(), "the cursor goes back to the start");
        assert!(!deletes.rewind(), "once");
        let left: Vec<i64> = ctx.store.inbox_after("contoso", 0, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(left, vec![ids[2]]);
    }
}
