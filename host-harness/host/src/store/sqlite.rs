//! The default [`StateStore`]: SQLite in WAL mode, one file (`state.db`) per host.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use super::{InboxDeleted, InboxDone, InboxEntry, InboxRow, KV_QUOTA_BYTES, StateStore, StoredKey};
use crate::error::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The state database.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A second connection, for the actors' inbox reads only: in WAL mode a reader never
    /// waits for a writer, so an actor's read does not wait (holding a runtime worker) for
    /// the inbox writer's commit and its fsync on `conn`.
    inbox_reader: Mutex<Connection>,
    /// The inbox writer's queue (see [`write_inbox`]).
    inbox: std::sync::mpsc::Sender<InboxJob>,
    /// Dropping it stops the checkpoint thread.
    _checkpoints: std::sync::mpsc::Sender<()>,
}

/// What the inbox writer does: a webhook's new row, or the rows an actor's plugin took.
enum InboxJob {
    Push(InboxRow, InboxDone),
    Delete(Vec<i64>, InboxDeleted),
}

/// Jobs the inbox writer commits together at most.
const GROUP_MAX: usize = 256;

/// The inbox writer: a thread that commits every inbox job queued meanwhile in one
/// transaction (group commit), and tells each job's caller. Under concurrent webhooks the
/// rows that arrive during one commit share the next; no caller's thread waits for the disk
/// (the webhooks' runtime workers and the actors go on). A group with a new row is durable
/// (one fsync); one of deletes only is not (a lost delete only replays a batch the plugin
/// has seen). Ends when the store is dropped.
fn write_inbox(conn: Arc<Mutex<Connection>>, queue: std::sync::mpsc::Receiver<InboxJob>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let ids = commit_group(&conn.lock().unwrap(), &group);
        let failed = |e: &rusqlite::Error| StoreError::Unavailable(e.to_string());
        let mut ids = ids.map(Vec::into_iter);
        for job in group {
            match (job, &mut ids) {
                (InboxJob::Push(_, done), Ok(ids)) => {
                    done(ids.next().ok_or_else(|| StoreError::Unavailable("no id".into())))
                }
                (InboxJob::Delete(_, done), Ok(_)) => done(Ok(())),
                (InboxJob::Push(_, done), Err(e)) => done(Err(failed(e))),
                (InboxJob::Delete(_, done), Err(e)) => done(Err(failed(e))),
            }
        }
    }
}

/// Runs `group` in one transaction, durable if it inserts a row; the new rows' ids, in order.
fn commit_group(c: &Connection, group: &[InboxJob]) -> Result<Vec<i64>, rusqlite::Error> {
    let run = |c: &Connection| {
        let t = c.unchecked_transaction()?;
        let mut ids = Vec::with_capacity(group.len());
        for job in group {
            match job {
                InboxJob::Push(r, _) => {
                    t.prepare_cached(
                        "INSERT INTO inbox (integration, kind, body, received_ms) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![r.integration, r.kind, r.body, r.received_ms as i64])?;
                    ids.push(t.last_insert_rowid());
                }
                InboxJob::Delete(rows, _) => {
                    let mut st = t.prepare_cached("DELETE FROM inbox WHERE id = ?1")?;
                    for id in rows {
                        st.execute(params![id])?;
                    }
                }
            }
        }
        t.commit()?;
        Ok(ids)
    };
    if group.iter().any(|j| matches!(j, InboxJob::Push(..))) { durable(c, run) } else { run(c) }
}

/// How often the background thread checkpoints the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl SqliteStore {
    /// Opens (creating) `state.db` in `dir`: see [`crate::store::secure_dir`] for what the
    /// directory must be. The database file is created `0600`; SQLite gives its `-wal` and
    /// `-shm` files the same mode.
    pub fn open(dir: &Path) -> anyhow::Result<SqliteStore> {
        super::secure_dir(dir)?;
        let path = dir.join("state.db");
        super::create_private_file(&path)?;
        let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // Another process writing (an operator's sqlite3 shell, a backup) makes a write wait
        // up to 5 s instead of failing at once.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL for everything but the inbox's new rows, which `inbox_push` commits with FULL:
        // that row (the one Graph gets its 202 for) is on disk when it returns, and with it
        // every commit before it (WAL). A lost delete only replays a batch the plugin has seen
        // (it drops it by its sequence number). BENCHMARKS.md measures the fsync's cost.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints (copying the WAL into the file, with an fsync) run on a thread of their
        // own, not inside whichever commit crosses the WAL's size threshold: that commit would
        // hold the connection (the webhook's inbox write, an actor's state write) for
        // milliseconds.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (integration TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (integration, key));
             CREATE TABLE IF NOT EXISTS keys (integration TEXT PRIMARY KEY, cert_id TEXT NOT NULL, pkcs8 BLOB NOT NULL, cert_der BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS kv_backup (integration TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (integration, key));
             CREATE TABLE IF NOT EXISTS swapped_release (integration TEXT PRIMARY KEY, configured_sha256 TEXT NOT NULL, wasm BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, integration TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL, received_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS integration_record (integration TEXT PRIMARY KEY, record BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS credential (integration TEXT NOT NULL, username TEXT NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (integration, username));",
        )?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let checkpointer = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        std::thread::Builder::new().name("state-checkpoint".into()).spawn(move || {
            let mut failing = false;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CHECKPOINT_EVERY) {
                // PASSIVE: copies what it can without waiting for, or blocking, the writer.
                match checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    // Said once when it starts failing and once when it recovers, not twice a
                    // second; meanwhile the WAL keeps every commit, so nothing is lost.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "state checkpoint failed; retrying every 500 ms");
                    }
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("state checkpoint works again");
                    }
                    _ => {}
                }
            }
        })?;
        let inbox_reader = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        inbox_reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let conn = Arc::new(Mutex::new(conn));
        let (inbox, queue) = std::sync::mpsc::channel();
        let writer = conn.clone();
        std::thread::Builder::new().name("state-inbox".into()).spawn(move || write_inbox(writer, queue))?;
        Ok(SqliteStore { conn, inbox_reader: Mutex::new(inbox_reader), inbox, _checkpoints: tx })
    }

    /// Holds the connection, as a long commit would, until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn hold_for_tests(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap()
    }

    /// Replaces the integration's rows of table `to` with its rows of table `from`.
    fn kv_copy(&self, integration: &str, from: &'static str, to: &'static str) -> Result<(), StoreError> {
        let mut c = self.conn.lock().unwrap();
        let t = c.transaction()?;
        t.execute(&format!("DELETE FROM {to} WHERE integration = ?1"), params![integration])?;
        t.execute(
            &format!("INSERT INTO {to} SELECT integration, key, value FROM {from} WHERE integration = ?1"),
            params![integration],
        )?;
        t.commit()?;
        Ok(())
    }
}

/// Runs `f` with `synchronous=FULL`: its commit is on disk (fsynced) when it returns.
fn durable<T>(c: &Connection, f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>) -> Result<T, rusqlite::Error> {
    c.pragma_update(None, "synchronous", "FULL")?;
    let r = f(c);
    c.pragma_update(None, "synchronous", "NORMAL")?;
    r
}

impl StateStore for SqliteStore {
    /// A value.
    fn get(&self, integration: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.query_row("SELECT value FROM kv WHERE integration = ?1 AND key = ?2", params![integration, key], |r| {
            r.get(0)
        })
        .optional()?)
    }

    /// Stores a value; refuses past the quota.
    fn set(&self, integration: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        let used: i64 = c.query_row(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM kv WHERE integration = ?1 AND key != ?2",
            params![integration, key],
            |r| r.get(0),
        )?;
        if used as u64 + value.len() as u64 > KV_QUOTA_BYTES {
            return Err(StoreError::Quota(KV_QUOTA_BYTES));
        }
        c.execute(
            "INSERT INTO kv (integration, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (integration, key) DO UPDATE SET value = excluded.value",
            params![integration, key, value],
        )
        ?;
        Ok(())
    }

    /// Deletes a value.
    fn delete(&self, integration: &str, key: &str) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        c.execute("DELETE FROM kv WHERE integration = ?1 AND key = ?2", params![integration, key])?;
        Ok(())
    }

    /// Keys with a prefix, sorted.
    fn keys(&self, integration: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let c = self.conn.lock().unwrap();
        let mut st =
            c.prepare("SELECT key FROM kv WHERE integration = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key")?;
        let rows = st.query_map(params![integration, prefix], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Copies the integration's key-value state aside (before a hot swap), replacing any
    /// earlier copy, in one transaction.
    fn kv_backup(&self, integration: &str) -> Result<(), StoreError> {
        self.kv_copy(integration, "kv", "kv_backup")
    }

    /// Puts the copy made by [`Db::kv_backup`] back (a rolled-back swap), in one transaction.
    fn kv_restore(&self, integration: &str) -> Result<(), StoreError> {
        self.kv_copy(integration, "kv_backup", "kv")
    }

    /// Records the release an integration was hot-swapped to, and the SHA-256 of the release
    /// its configuration names (the swap holds while the configuration does not change).
    fn put_swapped_release(&self, integration: &str, configured_sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT OR REPLACE INTO swapped_release (integration, configured_sha256, wasm) VALUES (?1, ?2, ?3)",
            params![integration, configured_sha256, wasm],
        )?;
        Ok(())
    }

    /// The release an integration was swapped to, if its configuration still names the release
    /// it named then; a record made under another configuration is dropped.
    fn swapped_release(&self, integration: &str, configured_sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn.lock().unwrap();
        let row: Option<(String, Vec<u8>)> = c
            .query_row(
                "SELECT configured_sha256, wasm FROM swapped_release WHERE integration = ?1",
                params![integration],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((sha, wasm)) if sha == configured_sha256 => Ok(Some(wasm)),
            Some(_) => {
                c.execute("DELETE FROM swapped_release WHERE integration = ?1", params![integration])?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Persists a webhook body before it is acknowledged; returns its inbox id.
    /// Commits with `synchronous=FULL` (on disk when this returns), grouped with the rows other
    /// callers push meanwhile (see [`write_inbox`]).
    fn inbox_push(&self, integration: &str, kind: &str, body: &[u8], received_ms: u64) -> Result<i64, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let row = InboxRow { integration: integration.into(), kind: kind.into(), body: body.to_vec(), received_ms };
        let _ = self.inbox_push_then(row, Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap_or_else(|_| Err(StoreError::Unavailable("the inbox writer stopped".into())))
    }

    /// Queued for the inbox writer ([`write_inbox`]).
    fn inbox_push_then(&self, row: InboxRow, done: InboxDone) -> Result<(), (InboxRow, InboxDone)> {
        if let Err(std::sync::mpsc::SendError(InboxJob::Push(_, done))) = self.inbox.send(InboxJob::Push(row, done)) {
            done(Err(StoreError::Unavailable("the inbox writer stopped".into())));
        }
        Ok(())
    }

    /// Queued for the inbox writer ([`write_inbox`]), after the rows queued before.
    fn inbox_delete_then(&self, ids: Vec<i64>, done: InboxDeleted) -> Result<(), (Vec<i64>, InboxDeleted)> {
        if let Err(std::sync::mpsc::SendError(InboxJob::Delete(_, done))) = self.inbox.send(InboxJob::Delete(ids, done))
        {
            done(Err(StoreError::Unavailable("the inbox writer stopped".into())));
        }
        Ok(())
    }

    /// Removes a processed inbox entry.
    fn inbox_delete(&self, id: i64) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        c.prepare_cached("DELETE FROM inbox WHERE id = ?1")?.execute(params![id])?;
        Ok(())
    }

    /// In one transaction.
    fn inbox_delete_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        let t = c.unchecked_transaction()?;
        {
            let mut st = t.prepare_cached("DELETE FROM inbox WHERE id = ?1")?;
            for id in ids {
                st.execute(params![id])?;
            }
        }
        t.commit()?;
        Ok(())
    }

    fn inbox_size(&self, integration: &str) -> Result<(u64, u64), StoreError> {
        let c = self.conn.lock().unwrap();
        let (n, bytes): (i64, i64) = c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM inbox WHERE integration = ?1",
            params![integration],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as u64, bytes as u64))
    }

    fn inbox_after(&self, integration: &str, after_id: i64, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let c = self.inbox_reader.lock().unwrap();
        let mut st = c.prepare_cached(
            "SELECT id, kind, body, received_ms FROM inbox WHERE integration = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![integration, after_id, limit], |r| {
            Ok(InboxEntry { id: r.get(0)?, kind: r.get(1)?, body: r.get(2)?, received_ms: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The integration's key, if one was stored.
    fn key(&self, integration: &str) -> Result<Option<StoredKey>, StoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.query_row("SELECT cert_id, pkcs8, cert_der FROM keys WHERE integration = ?1", params![integration], |r| {
            Ok(StoredKey { cert_id: r.get(0)?, pkcs8: r.get(1)?, cert_der: r.get(2)? })
        })
        .optional()?)
    }

    /// Stores the integration's key.
    fn put_key(&self, integration: &str, k: &StoredKey) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT OR REPLACE INTO keys (integration, cert_id, pkcs8, cert_der) VALUES (?1, ?2, ?3, ?4)",
            params![integration, k.cert_id, k.pkcs8, k.cert_der],
        )?;
        Ok(())
    }

    fn credential(&self, integration: &str, username: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare_cached("SELECT sealed FROM credential WHERE integration = ?1 AND username = ?2")?;
        let mut rows = st.query(params![integration, username.to_lowercase()])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    fn put_credential(&self, integration: &str, username: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        // Durable: Microsoft spent the previous refresh token when it answered this one.
        durable(&c, |c| {
            c.execute(
                "INSERT INTO credential (integration, username, sealed) VALUES (?1, ?2, ?3)
                 ON CONFLICT (integration, username) DO UPDATE SET sealed = excluded.sealed",
                params![integration, username.to_lowercase(), sealed],
            )
        })?;
        Ok(())
    }

    fn integration_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare("SELECT integration, record FROM integration_record ORDER BY integration")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn put_integration_record(&self, integration: &str, record: &[u8]) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        durable(&c, |c| {
            c.execute(
                "INSERT INTO integration_record (integration, record) VALUES (?1, ?2)
                 ON CONFLICT (integration) DO UPDATE SET record = excluded.record",
                params![integration, record],
            )
        })?;
        Ok(())
    }

    fn purge(&self, integration: &str) -> Result<(), StoreError> {
        let mut c = self.conn.lock().unwrap();
        let t = c.transaction()?;
        for table in ["kv", "kv_backup", "keys", "swapped_release", "inbox", "credential"] {
            t.execute(&format!("DELETE FROM {table} WHERE integration = ?1"), params![integration])?;
        }
        t.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inbox row is committed with FULL (on disk when `inbox_push` returns), the rest with
    /// NORMAL; another writer makes a write wait instead of fail.
    #[test]
    fn inbox_rows_are_durable_and_writers_wait_for_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = SqliteStore::open(&dir).unwrap();
        let sync = |c: &Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
        let c = s.conn.lock().unwrap();
        assert_eq!(sync(&c), 1, "NORMAL between inbox rows");
        assert_eq!(durable(&c, |c| Ok(sync(c))).unwrap(), 2, "FULL for an inbox row");
        assert_eq!(sync(&c), 1);
        drop(c);
        let id = s.inbox_push("contoso", "notifications", b"{}", 0).unwrap();
        assert_eq!(s.inbox_after("contoso", 0, 10).unwrap()[0].id, id);
        let c = s.conn.lock().unwrap();
        assert_eq!(sync(&c), 1);
        let busy: i64 = c.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        assert_eq!(busy, 5000);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("state.db")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    /// The webhook queues its row and goes on: the row is committed by the inbox writer (with
    /// the rows queued meanwhile, in one transaction) while the caller does not wait, and each
    /// caller is told its id there, in the order the rows came.
    #[test]
    fn an_inbox_row_is_queued_without_waiting_for_a_commit_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&tmp.path().join("state")).unwrap();
        // A commit in progress: the writer cannot take the connection.
        let busy = s.conn.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for n in 0..3u64 {
            let tx = tx.clone();
            let row = InboxRow {
                integration: "contoso".into(),
                kind: "notifications".into(),
                body: vec![n as u8],
                received_ms: n,
            };
            let done: InboxDone =
                Box::new(move |r| tx.send((n, r, std::thread::current().name().map(String::from))).unwrap());
            assert!(s.inbox_push_then(row, done).is_ok(), "the SQLite store takes the row itself");
        }
        assert!(rx.try_recv().is_err(), "nothing is told before the row is durable");
        drop(busy);
        let told: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        let ids: Vec<i64> = told.iter().map(|(_, r, _)| *r.as_ref().unwrap()).collect();
        assert_eq!(told.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2], "told in the order they came");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in the order they came: {ids:?}");
        assert!(told.iter().all(|t| t.2.as_deref() == Some("state-inbox")), "told on the writer's thread");
        let stored = s.inbox_after("contoso", 0, 10).unwrap();
        assert_eq!(
            stored.iter().map(|e| (e.id, e.body.clone())).collect::<Vec<_>>(),
            [(ids[0], vec![0]), (ids[1], vec![1]), (ids[2], vec![2])]
        );
    }

    /// An actor reads its inbox while a write transaction holds the main connection (the
    /// writer's commit, or any state write): it sees every committed row and none of the
    /// open transaction's, without waiting for it.
    #[test]
    fn the_inbox_is_read_while_a_write_transaction_is_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(&tmp.path().join("state")).unwrap());
        let first = s.inbox_push("contoso", "notifications", b"committed", 1).unwrap();
        let busy = s.conn.lock().unwrap();
        busy.execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO inbox (integration, kind, body, received_ms) VALUES ('contoso', 'notifications', x'00', 2);",
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = s.clone();
        std::thread::spawn(move || {
            tx.send(reader.inbox_after("contoso", 0, 10).map(|r| r.into_iter().map(|e| e.id).collect::<Vec<_>>()))
        });
        // A bound for a failure only: the read returns at once, or waits for `busy` forever.
        let read =
            rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the read waited for the open transaction");
        assert_eq!(read.unwrap(), [first], "committed rows only");
        busy.execute_batch("COMMIT").unwrap();
        drop(busy);
        assert_eq!(s.inbox_after("contoso", 0, 10).unwrap().len(), 2, "the commit is seen by the next read");
    }
}
