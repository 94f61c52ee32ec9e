//! A [`StateStore`] on PostgreSQL, for several hosts on one database (see `crate::lease` for
//! who runs which integration, and the fencing every write of an integration's state checks).
//!
//! The trait is synchronous (its calls run inside guest calls and webhook handlers, as
//! SQLite's do); this store runs its queries on a small runtime of its own, so that a caller
//! on any thread (a runtime's worker, the blocking pool, a plain thread) only waits for the
//! answer, as it waits for SQLite's fsync. Every query is bounded by `statement_timeout`, and
//! a connection is waited for at most [`POOL_WAIT`].
//!
//! The schema is versioned (`migrations/postgres`, applied at start under an advisory lock,
//! so that hosts starting together apply each migration once); a database whose schema is
//! newer than this host knows is refused.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{InboxEntry, KV_QUOTA_BYTES, StateStore, StoredKey};
use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// How long a call waits for a free connection before it fails as unavailable.
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// The longest a statement may run (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session may sit inside a transaction without sending anything
/// (`idle_in_transaction_session_timeout`): a host frozen there (SIGSTOP, a paused VM, a
/// partition) holds row locks, the lease row's among them, and would keep any other host
/// from taking its integrations over; the server ends its session, and the locks go with it,
/// well before the lease runs out ([`crate::lease::LEASE_TTL`]). The host's transactions
/// send their statements back to back, never waiting on anything else in between.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// Connections per host.
pub const POOL_SIZE: usize = 16;
/// The advisory lock hosts take to migrate one at a time.
const MIGRATION_LOCK: i64 = 0x7072_6573_656e_6365; // "presence"

/// The state of every integration, on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// The fencing token this host holds for each integration it runs (see `crate::lease`):
    /// every write of an integration's state checks it inside its transaction, so that a host
    /// that lost the lease writes nothing. `None`: no fencing (one host on the database).
    fences: Option<RwLock<HashMap<String, i64>>>,
    config: tokio_postgres::Config,
    /// Writes refused because this host did not hold the integration's current lease.
    fenced_writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is refused on a runtime's thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL error as the store reports it (the server's message when it sent one; never
/// the connection string).
fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => unavailable(format!("{} ({})", db.message(), db.code().code())),
        None => unavailable(e),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        db_error(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => db_error(e),
            e => unavailable(e),
        }
    }
}

/// The connection settings of `url` (`postgres://user@host:port/db` or `host=... dbname=...`),
/// with this store's timeouts.
pub fn parse_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut c = tokio_postgres::Config::from_str(url)
        .map_err(|e| anyhow::anyhow!("the PostgreSQL connection string is not valid: {e}"))?;
    c.connect_timeout(POOL_WAIT);
    c.options(format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION.as_millis()
    ));
    c.application_name(APPLICATION_NAME);
    Ok(c)
}

/// The `application_name` of this store's connections (`/<host id>` follows on a host of a
/// fleet: `pg_stat_activity` shows which host holds which connection).
pub const APPLICATION_NAME: &str = "teams-presence-sync";

impl PgStore {
    /// Connects to `url`, applies the migrations this host has and the database lacks, and
    /// checks that the database's schema is not newer. `fenced`: every write of an
    /// integration's state requires the lease this host holds (several hosts).
    pub fn connect(url: &str, fenced: bool) -> anyhow::Result<PgStore> {
        Self::open(parse_url(url)?, fenced)
    }

    /// Connects host `host_id` of a fleet: fenced, its connections named
    /// `teams-presence-sync/<host_id>`.
    pub fn connect_host(url: &str, host_id: &str) -> anyhow::Result<PgStore> {
        let mut config = parse_url(url)?;
        config.application_name(format!("{APPLICATION_NAME}/{host_id}"));
        Self::open(config, true)
    }

    fn open(config: tokio_postgres::Config, fenced: bool) -> anyhow::Result<PgStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("state-postgres")
            .enable_all()
            .build()
            .context("starting the PostgreSQL store's runtime")?;
        let handle = rt.handle().clone();
        let pool = Pool::builder(Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        ))
        .max_size(POOL_SIZE)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")?;
        let store = PgStore {
            pool,
            rt: Some(rt),
            handle,
            fences: fenced.then(Default::default),
            config,
            fenced_writes: Default::default(),
        };
        store.block(migrate(store.config.clone()))?;
        Ok(store)
    }

    /// The connection settings (for a listener of its own, `crate::lease`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The pool (for the lease keeper, on this store's runtime).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// This store's runtime.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` on this store's runtime and waits for it, from any thread.
    pub fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the PostgreSQL store's runtime runs while the store lives")
    }

    /// Writes of `integration` from now on carry `token` (this host took its lease).
    pub fn hold(&self, integration: &str, token: i64) {
        if let Some(f) = &self.fences {
            f.write().unwrap().insert(integration.to_string(), token);
        }
    }

    /// Writes refused so far because this host did not hold the integration's current lease.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced_writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This host let go of `integration`'s lease (or lost it): its writes are refused.
    pub fn let_go(&self, integration: &str) {
        if let Some(f) = &self.fences {
            f.write().unwrap().remove(integration);
        }
    }

    /// The token writes of `integration` must carry: `Ok(None)` without fencing; refused when
    /// this host does not hold its lease.
    fn fence(&self, integration: &str) -> Result<Option<i64>, StoreError> {
        match &self.fences {
            None => Ok(None),
            Some(f) => f.read().unwrap().get(integration).copied().map(Some).ok_or_else(|| {
                self.fenced_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fenced(integration)
            }),
        }
    }

    /// Runs `work` in one transaction that first checks the integration's fencing token
    /// (`FOR SHARE` on its lease row: a host taking the lease over waits for this transaction,
    /// and this one sees the token the takeover wrote, so a host that lost the lease writes
    /// nothing).
    fn write<T, F>(&self, integration: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(
                &'t tokio_postgres::Transaction<'t>,
            ) -> futures_util::future::BoxFuture<'t, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let fence = self.fence(integration)?;
        let pool = self.pool.clone();
        let integration = integration.to_string();
        let refused = self.fenced_writes.clone();
        self.block(async move {
            let mut c = pool.get().await?;
            let t = c.transaction().await?;
            if let Some(token) = fence {
                let held = t
                    .query_opt(
                        "SELECT 1 FROM lease WHERE integration = $1 AND token = $2 FOR SHARE",
                        &[&integration, &token],
                    )
                    .await?;
                if held.is_none() {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(fenced(&integration));
                }
            }
            let r = work(&t).await?;
            t.commit().await?;
            Ok(r)
        })
    }

    /// Runs a read on a pooled connection.
    fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c deadpool_postgres::Client) -> futures_util::future::BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let pool = self.pool.clone();
        self.block(async move {
            let c = pool.get().await?;
            work(&c).await
        })
    }
}

fn fenced(integration: &str) -> StoreError {
    StoreError::Fenced(integration.to_string())
}

/// Applies the migrations the database lacks, one host at a time; refuses a newer schema.
async fn migrate(config: tokio_postgres::Config) -> anyhow::Result<()> {
    let (mut client, conn) = config.connect(NoTls).await.context("connecting to PostgreSQL")?;
    let conn = tokio::spawn(conn);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.context("taking the migration lock")?;
    let runner = embedded::migrations::runner();
    let known = runner.get_migrations().iter().map(|m| m.version()).max().unwrap_or_default();
    let applied = client
        .query_opt("SELECT to_regclass('refinery_schema_history')::text", &[])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0));
    if applied.is_some() {
        let newest: Option<i32> =
            client.query_one("SELECT MAX(version) FROM refinery_schema_history", &[]).await?.get(0);
        if let Some(v) = newest.filter(|v| i64::from(*v) > i64::from(known)) {
            anyhow::bail!(
                "the database's schema is version {v}, newer than this host knows ({known}): a newer host \
                 migrated it; run that release here too (this host refuses to write to it)"
            );
        }
    }
    let report = runner.run_async(&mut client).await.context("migrating the PostgreSQL schema")?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "PostgreSQL schema migrated");
    }
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

fn owned(s: &str) -> String {
    s.to_string()
}

impl StateStore for PgStore {
    fn get(&self, integration: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (i, k) = (owned(integration), owned(key));
        self.read(move |c| {
            Box::pin(async move {
                let row = c.query_opt("SELECT value FROM kv WHERE integration = $1 AND key = $2", &[&i, &k]).await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    fn set(&self, integration: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (i, k, v) = (owned(integration), owned(key), value.to_vec());
        self.write(integration, move |t| {
            Box::pin(async move {
                let used: i64 = t
                    .query_one(
                        "SELECT COALESCE(SUM(octet_length(value)), 0)::BIGINT FROM kv WHERE integration = $1 AND key <> $2",
                        &[&i, &k],
                    )
                    .await?
                    .get(0);
                if used as u64 + v.len() as u64 > KV_QUOTA_BYTES {
                    return Err(StoreError::Quota(KV_QUOTA_BYTES));
                }
                t.execute(
                    "INSERT INTO kv (integration, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (integration, key) DO UPDATE SET value = excluded.value",
                    &[&i, &k, &v],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn delete(&self, integration: &str, key: &str) -> Result<(), StoreError> {
        let (i, k) = (owned(integration), owned(key));
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute("DELETE FROM kv WHERE integration = $1 AND key = $2", &[&i, &k]).await?;
                Ok(())
            })
        })
    }

    fn keys(&self, integration: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (i, p) = (owned(integration), owned(prefix));
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT key FROM kv WHERE integration = $1 AND starts_with(key, $2) ORDER BY key COLLATE \"C\"",
                        &[&i, &p],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
        })
    }

    fn kv_backup(&self, integration: &str) -> Result<(), StoreError> {
        let i = owned(integration);
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute("DELETE FROM kv_backup WHERE integration = $1", &[&i]).await?;
                t.execute("INSERT INTO kv_backup SELECT integration, key, value FROM kv WHERE integration = $1", &[&i])
                    .await?;
                Ok(())
            })
        })
    }

    fn kv_restore(&self, integration: &str) -> Result<(), StoreError> {
        let i = owned(integration);
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute("DELETE FROM kv WHERE integration = $1", &[&i]).await?;
                t.execute("INSERT INTO kv SELECT integration, key, value FROM kv_backup WHERE integration = $1", &[&i])
                    .await?;
                Ok(())
            })
        })
    }

    /// Any host takes a webhook for any integration (its owner processes it): not fenced.
    fn inbox_push(&self, integration: &str, kind: &str, body: &[u8], received_ms: u64) -> Result<i64, StoreError> {
        let (i, k, b, ms) = (owned(integration), owned(kind), body.to_vec(), received_ms as i64);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "INSERT INTO inbox (integration, kind, body, received_ms) VALUES ($1, $2, $3, $4) RETURNING id",
                        &[&i, &k, &b, &ms],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
    }

    fn inbox_delete(&self, id: i64) -> Result<(), StoreError> {
        self.inbox_delete_many(&[id])
    }

    /// Only the integration's owner removes its rows: fenced by the integration the rows
    /// belong to (rows of another integration are not touched).
    fn inbox_delete_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        let fences: Option<HashMap<String, i64>> = self.fences.as_ref().map(|f| f.read().unwrap().clone());
        let pool = self.pool.clone();
        self.block(async move {
            let mut c = pool.get().await?;
            let t = c.transaction().await?;
            match fences {
                None => {
                    t.execute("DELETE FROM inbox WHERE id = ANY($1)", &[&ids]).await?;
                }
                Some(held) => {
                    let (names, tokens): (Vec<String>, Vec<i64>) = held.into_iter().unzip();
                    // Rows of integrations whose lease this host still holds, checked under
                    // the lease rows' share lock.
                    t.execute(
                        "DELETE FROM inbox USING (
                             SELECT l.integration FROM lease l
                             JOIN unnest($2::TEXT[], $3::BIGINT[]) AS h(integration, token)
                               ON h.integration = l.integration AND h.token = l.token
                             FOR SHARE OF l
                         ) AS held
                         WHERE inbox.id = ANY($1) AND inbox.integration = held.integration",
                        &[&ids, &names, &tokens],
                    )
                    .await?;
                }
            }
            t.commit().await?;
            Ok(())
        })
    }

    fn inbox_size(&self, integration: &str) -> Result<(u64, u64), StoreError> {
        let i = owned(integration);
        self.read(move |c| {
            Box::pin(async move {
                let r = c
                    .query_one(
                        "SELECT COUNT(*), COALESCE(SUM(octet_length(body)), 0)::BIGINT FROM inbox WHERE integration = $1",
                        &[&i],
                    )
                    .await?;
                Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
            })
        })
    }

    fn inbox_after(&self, integration: &str, after_id: i64, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let i = owned(integration);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, kind, body, received_ms FROM inbox WHERE integration = $1 AND id > $2 ORDER BY id LIMIT $3",
                        &[&i, &after_id, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| InboxEntry {
                        id: r.get(0),
                        kind: r.get(1),
                        body: r.get(2),
                        received_ms: r.get::<_, i64>(3) as u64,
                    })
                    .collect())
            })
        })
    }

    fn key(&self, integration: &str) -> Result<Option<StoredKey>, StoreError> {
        let i = owned(integration);
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT cert_id, pkcs8, cert_der FROM notification_key WHERE integration = $1", &[&i])
                    .await?;
                Ok(row.map(|r| StoredKey { cert_id: r.get(0), pkcs8: r.get(1), cert_der: r.get(2) }))
            })
        })
    }

    fn put_key(&self, integration: &str, k: &StoredKey) -> Result<(), StoreError> {
        let (i, k) = (owned(integration), k.clone());
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute(
                    "INSERT INTO notification_key (integration, cert_id, pkcs8, cert_der) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (integration) DO UPDATE
                     SET cert_id = excluded.cert_id, pkcs8 = excluded.pkcs8, cert_der = excluded.cert_der",
                    &[&i, &k.cert_id, &k.pkcs8, &k.cert_der],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn put_swapped_release(&self, integration: &str, configured_sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        let (i, sha, w) = (owned(integration), owned(configured_sha256), wasm.to_vec());
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute(
                    "INSERT INTO swapped_release (integration, configured_sha256, wasm) VALUES ($1, $2, $3)
                     ON CONFLICT (integration) DO UPDATE SET configured_sha256 = excluded.configured_sha256, wasm = excluded.wasm",
                    &[&i, &sha, &w],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn swapped_release(&self, integration: &str, configured_sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (i, sha) = (owned(integration), owned(configured_sha256));
        let row = self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT configured_sha256, wasm FROM swapped_release WHERE integration = $1", &[&i])
                    .await?;
                Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1))))
            })
        })?;
        match row {
            Some((s, wasm)) if s == sha => Ok(Some(wasm)),
            Some(_) => {
                // A record made under another configuration: dropped (by its owner).
                let i = owned(integration);
                self.write(integration, move |t| {
                    Box::pin(async move {
                        t.execute("DELETE FROM swapped_release WHERE integration = $1", &[&i]).await?;
                        Ok(())
                    })
                })?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn credential(&self, integration: &str, username: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (i, u) = (owned(integration), username.to_lowercase());
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT sealed FROM credential WHERE integration = $1 AND username = $2", &[&i, &u])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    fn put_credential(&self, integration: &str, username: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let (i, u, s) = (owned(integration), username.to_lowercase(), sealed.to_vec());
        self.write(integration, move |t| {
            Box::pin(async move {
                t.execute(
                    "INSERT INTO credential (integration, username, sealed) VALUES ($1, $2, $3)
                     ON CONFLICT (integration, username) DO UPDATE SET sealed = excluded.sealed",
                    &[&i, &u, &s],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn integration_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT integration, record FROM integration_record ORDER BY integration COLLATE \"C\"", &[])
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    /// The admin API writes records on whichever host it reached: not fenced.
    fn put_integration_record(&self, integration: &str, record: &[u8]) -> Result<(), StoreError> {
        let (i, r) = (owned(integration), record.to_vec());
        self.read(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO integration_record (integration, record) VALUES ($1, $2)
                     ON CONFLICT (integration) DO UPDATE SET record = excluded.record",
                    &[&i, &r],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn purge(&self, integration: &str) -> Result<(), StoreError> {
        let i = owned(integration);
        self.write(integration, move |t| {
            Box::pin(async move {
                for table in ["kv", "kv_backup", "notification_key", "swapped_release", "inbox", "credential"] {
                    t.execute(&format!("DELETE FROM {table} WHERE integration = $1"), &[&i]).await?;
                }
                Ok(())
            })
        })
    }
}

/// A new, empty database on the server of `admin_url` (a `postgres://` URL whose user may
/// create databases), named `<prefix>_<random>`; returns its URL. For tests and benchmarks:
/// each gets a database of its own on one throwaway cluster.
pub async fn scratch_database(admin_url: &str, prefix: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin_url).context("the PostgreSQL URL must be a postgres:// URL")?;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = parse_url(admin_url)?.connect(NoTls).await.context("connecting to PostgreSQL")?;
    let conn = tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.context("creating a scratch database")?;
    drop(client);
    let _ = conn.await;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// The URL of the tests' PostgreSQL server, from `PRESENCE_TEST_POSTGRES` (`scripts/test`
/// starts a throwaway cluster and sets it).
///
/// # Panics
/// When it is not set: the PostgreSQL tests never skip.
pub fn test_server_url() -> String {
    std::env::var("PRESENCE_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "PRESENCE_TEST_POSTGRES is not set: the PostgreSQL tests need a server. Run scripts/test, or start \
             one with `scripts/pg-cluster start DIR` and export PRESENCE_TEST_POSTGRES=<the URL it prints>"
        )
    })
}
