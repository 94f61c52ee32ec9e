//! The state-store seam: everything the host keeps durably for an integration. The plugin's
//! key-value state (`state` interface), the durable webhook inbox (notifications acknowledged
//! to Graph but not yet processed), the notification key and the release a hot swap chose.
//!
//! [`SqliteStore`] is the default (embedded, WAL). A platform plugs in its own by implementing
//! [`StateStore`]. Calls are synchronous: they run inside a guest call or a webhook handler and
//! must be short.

#[cfg(test)]
mod behaviour;
pub mod postgres;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::path::Path;

use anyhow::Context;

use crate::error::StoreError;

/// Per-integration quota of key-value bytes.
pub const KV_QUOTA_BYTES: u64 = 256 << 20;

/// A stored key: PKCS#8 private key (sealed by the host before it reaches the store) and DER
/// certificate.
#[derive(Clone)]
pub struct StoredKey {
    /// Certificate id (echoed by Graph).
    pub cert_id: String,
    /// PKCS#8 DER of the RSA private key, sealed (see [`crate::seal`]).
    pub pkcs8: Vec<u8>,
    /// DER of the self-signed certificate.
    pub cert_der: Vec<u8>,
}

/// One notification body in the durable inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Its id: entries are processed in id order.
    pub id: i64,
    /// `notifications` or `lifecycle`.
    pub kind: String,
    /// The body as Graph sent it.
    pub body: Vec<u8>,
    /// When it arrived (ms since the epoch, the host's clock).
    pub received_ms: u64,
}

/// A webhook body to persist in the inbox ([`StateStore::inbox_push_then`]).
#[derive(Debug, Clone)]
pub struct InboxRow {
    /// The integration it is for.
    pub integration: String,
    /// `notifications` or `lifecycle`.
    pub kind: String,
    /// The body (sealed by the host).
    pub body: Vec<u8>,
    /// When it arrived (ms since the epoch, the host's clock).
    pub received_ms: u64,
}

/// What [`StateStore::inbox_push_then`] calls with the row's id once it is durable, or the
/// store's error.
pub type InboxDone = Box<dyn FnOnce(Result<i64, StoreError>) + Send>;

/// What [`StateStore::inbox_delete_then`] calls once the rows are gone, or with the store's
/// error.
pub type InboxDeleted = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Durable state of every integration on a host.
pub trait StateStore: Send + Sync + 'static {
    /// The plugin's value under `key`.
    fn get(&self, integration: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a plugin value; refuses past [`KV_QUOTA_BYTES`] with [`StoreError::Quota`].
    fn set(&self, integration: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes a plugin value (nothing happens if it is absent).
    fn delete(&self, integration: &str, key: &str) -> Result<(), StoreError>;
    /// The plugin's keys that start with `prefix`, sorted.
    fn keys(&self, integration: &str, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Copies the integration's key-value state aside (before a hot swap), replacing any
    /// earlier copy, atomically.
    fn kv_backup(&self, integration: &str) -> Result<(), StoreError>;
    /// Puts the copy made by [`StateStore::kv_backup`] back (a rolled-back swap), atomically.
    fn kv_restore(&self, integration: &str) -> Result<(), StoreError>;

    /// Persists a webhook body before it is acknowledged; returns its inbox id.
    fn inbox_push(&self, integration: &str, kind: &str, body: &[u8], received_ms: u64) -> Result<i64, StoreError>;
    /// [`StateStore::inbox_push`] without blocking the caller (the webhook's runtime
    /// worker): the store persists the row on a thread of its own and calls `done` with the
    /// outcome there, also when the caller has gone meanwhile. A store without such a path
    /// gives `done` back (the default), and the host calls `inbox_push` on its blocking pool.
    fn inbox_push_then(&self, row: InboxRow, done: InboxDone) -> Result<(), (InboxRow, InboxDone)> {
        Err((row, done))
    }
    /// Removes a processed inbox entry.
    fn inbox_delete(&self, id: i64) -> Result<(), StoreError>;
    /// Removes processed inbox entries (one commit, where the store can).
    fn inbox_delete_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        ids.iter().try_for_each(|id| self.inbox_delete(*id))
    }
    /// [`StateStore::inbox_delete_many`] without blocking the caller (an integration's actor,
    /// which would otherwise wait for a commit in progress, e.g. the inbox writer's fsync):
    /// the store removes the rows on a thread of its own and calls `done` there. Rows read
    /// before `done` is called may still be among them. A store without such a path gives
    /// `done` back (the default), and the host calls `inbox_delete_many` itself.
    fn inbox_delete_then(&self, ids: Vec<i64>, done: InboxDeleted) -> Result<(), (Vec<i64>, InboxDeleted)> {
        Err((ids, done))
    }
    /// How many inbox entries of the integration wait, and their bytes.
    fn inbox_size(&self, integration: &str) -> Result<(u64, u64), StoreError>;
    /// The integration's unprocessed inbox entries after `after_id`, oldest first, at most
    /// `limit` of them.
    fn inbox_after(&self, integration: &str, after_id: i64, limit: usize) -> Result<Vec<InboxEntry>, StoreError>;

    /// The integration's notification key, if one was stored.
    fn key(&self, integration: &str) -> Result<Option<StoredKey>, StoreError>;
    /// Stores the integration's notification key.
    fn put_key(&self, integration: &str, key: &StoredKey) -> Result<(), StoreError>;

    /// Records the release an integration was hot-swapped to, and the SHA-256 of the release
    /// its configuration names (the swap holds while the configuration does not change).
    fn put_swapped_release(&self, integration: &str, configured_sha256: &str, wasm: &[u8]) -> Result<(), StoreError>;
    /// The release an integration was swapped to, if its configuration still names the
    /// release it named then; a record made under another configuration is dropped.
    fn swapped_release(&self, integration: &str, configured_sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// An integration user's credential the host keeps (a refresh token, sealed), if any.
    fn credential(&self, integration: &str, username: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keeps an integration user's credential (sealed), replacing the one kept.
    fn put_credential(&self, integration: &str, username: &str, sealed: &[u8]) -> Result<(), StoreError>;

    /// Every integration record the admin API wrote (name, sealed record), by name.
    fn integration_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Writes an integration's record, durably (the admin API answers after it).
    fn put_integration_record(&self, integration: &str, record: &[u8]) -> Result<(), StoreError>;
    /// Removes everything the host and the plugin kept for an integration (its state and the
    /// copy of it, its inbox, its notification key, its credentials, the release it was
    /// swapped to), in one
    /// transaction where the store can, but not its record.
    fn purge(&self, integration: &str) -> Result<(), StoreError>;
}

/// Makes `dir` the host's private state directory, or refuses it: created `0700` when it is
/// missing; an existing one must belong to this user and give no access to group or others
/// (it holds the sealed keys, the inbox and the compile cache, native code the host loads).
#[cfg(unix)]
pub fn secure_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
    // This process's user is the owner of a file it creates (std has no geteuid).
    let probe = dir.join(".owner-probe");
    let owner = std::fs::File::create(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.uid())
        .with_context(|| format!("the state directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    anyhow::ensure!(
        meta.uid() == owner,
        "the state directory {} belongs to another user (uid {}): the host must own it",
        dir.display(),
        meta.uid()
    );
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & 0o077 == 0,
        "the state directory {} is open to others (mode {mode:03o}); it holds keys and notifications: \
         run `chmod 700 {}`",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Not Unix: the directory is created; its access is the platform's to set.
#[cfg(not(unix))]
pub fn secure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))
}

/// Creates `path` empty with mode `0600` if it is missing; an existing one must give no
/// access to group or others.
pub fn create_private_file(path: &Path) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).with_context(|| format!("opening {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} is open to others (mode {mode:03o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Holds the state directory for this process: a second host on the same directory refuses
/// to start (two writers would take each other's inbox rows and subscriptions). Released when
/// dropped, or by the system when the process dies.
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes `<dir>/host.lock`, or says which process holds it.
    pub fn take(dir: &Path) -> anyhow::Result<DirLock> {
        let path = dir.join("host.lock");
        create_private_file(&path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another host ({}) runs on the state directory {}: one host per state directory \
                     (several hosts share PostgreSQL, not a directory)",
                    if holder.trim().is_empty() { "pid unknown".to_string() } else { format!("pid {}", holder.trim()) },
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        use std::io::Write;
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_shows_the_store_behaviour() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        behaviour::all(&|| Box::new(SqliteStore::open(&dir).unwrap()));
    }

    fn scratch() -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(postgres::scratch_database(&postgres::test_server_url(), "store")).unwrap()
    }

    #[test]
    fn postgres_shows_the_store_behaviour() {
        let url = scratch();
        behaviour::all(&|| Box::new(PgStore::connect(&url, false).unwrap()));
    }

    /// Hosts starting together migrate once; a schema newer than the host knows is refused
    /// with a clear error, and nothing is written to it.
    #[test]
    fn postgres_migrates_once_and_refuses_a_newer_schema() {
        let url = scratch();
        let hosts: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || PgStore::connect(&url, false).map(|_| ()))
            })
            .collect();
        for h in hosts {
            h.join().unwrap().unwrap();
        }
        let s = PgStore::connect(&url, false).unwrap();
        let (n, newest): (i64, i32) = s.block({
            let pool = s.pool().clone();
            async move {
                let c = pool.get().await.unwrap();
                let r = c.query_one("SELECT COUNT(*), MAX(version) FROM refinery_schema_history", &[]).await.unwrap();
                (r.get(0), r.get(1))
            }
        });
        assert_eq!(n as i32, newest, "each migration applied once");
        s.block({
            let pool = s.pool().clone();
            async move {
                let c = pool.get().await.unwrap();
                c.execute(
                    "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
                    &[],
                )
                .await
                .unwrap();
            }
        });
        let e = PgStore::connect(&url, false).err().expect("refused");
        let e = format!("{e:#}");
        assert!(e.contains("schema is version 9999, newer than this host knows"), "{e}");
    }

    /// With fencing, a write of an integration's state needs the lease's current token: none
    /// held, an old one after a takeover, both write nothing.
    #[test]
    fn postgres_fencing_refuses_writes_without_the_current_token() {
        let url = scratch();
        let s = PgStore::connect(&url, true).unwrap();
        let sql = |q: &'static str| {
            let pool = s.pool().clone();
            s.block(async move { pool.get().await.unwrap().execute(q, &[]).await.unwrap() })
        };
        sql(
            "INSERT INTO lease (integration, owner, token, expires_at) VALUES ('f', 'me', 7, now() + interval '1 minute')",
        );
        assert_eq!(s.set("f", "k", b"v"), Err(StoreError::Fenced("f".into())), "no lease held");
        s.hold("f", 7);
        s.set("f", "k", b"v").unwrap();
        let row = s.inbox_push("f", "notifications", b"x", 0).unwrap();
        // Another host takes the lease over.
        sql("UPDATE lease SET owner = 'other', token = 8 WHERE integration = 'f'");
        assert_eq!(s.set("f", "k", b"stale"), Err(StoreError::Fenced("f".into())));
        assert_eq!(s.put_credential("f", "u@x", b"t"), Err(StoreError::Fenced("f".into())));
        s.inbox_delete_many(&[row]).unwrap();
        assert_eq!(s.inbox_size("f").unwrap().0, 1, "the old owner's delete removed nothing");
        assert_eq!(s.get("f", "k").unwrap(), Some(b"v".to_vec()), "nothing the fenced host wrote");
        s.hold("f", 8);
        s.inbox_delete_many(&[row]).unwrap();
        assert_eq!(s.inbox_size("f").unwrap().0, 0);
        s.let_go("f");
        assert!(s.delete("f", "k").is_err());
    }
}
