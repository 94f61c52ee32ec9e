//! Several hosts on one PostgreSQL database: each integration runs on the one host that holds
//! its lease.
//!
//! The rules (README "Several hosts"):
//! - A lease (`lease` row) has an owner, an expiry and a **fencing token** that grows by one
//!   with every takeover. Its owner renews it every [`ROUND`] for [`LEASE_TTL`]; a lease not
//!   renewed in time is free, and another host takes it over (failover within
//!   `LEASE_TTL + ROUND`, plus the integration's start).
//! - Every write of the integration's state checks the token inside its transaction, under a
//!   share lock of the lease row (see [`crate::store::PgStore`]): a takeover waits for a write
//!   under way, and a host that lost the lease writes nothing from then on.
//! - The owner also stops acting (no request to Microsoft, nothing shown in the switchboard)
//!   once its lease may have expired by its own clock: [`LEASE_TTL`] less [`MARGIN`] after the
//!   start of its last renewal that succeeded. A host paused (SIGSTOP, a long GC-like stall)
//!   past that finds its lease gone when it resumes, and stops the integration.
//! - Hosts announce themselves with each renewal (`host` row); those seen within
//!   [`LEASE_TTL`] share the integrations evenly: with `n` hosts and `t` integrations each runs
//!   `t / n`, the hosts that hold most one more while `t % n` remain. A host above its share
//!   lets go of at most [`RELEASE_PER_ROUND`] each round (stopping it first), one below takes
//!   free leases, at most [`ACQUIRE_PER_ROUND`]: a new or returning host takes its share
//!   without a storm of takeovers, and no integration moves without need.
//! - Webhooks are taken by any host into the shared inbox; the owner is woken by
//!   `NOTIFY presence_inbox` (and looks at its inbox every round anyway).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::store::PgStore;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a host renews its leases, looks at the others and balances.
pub const ROUND: Duration = Duration::from_secs(2);
/// How much sooner than the database a host considers its own lease gone (its clock and the
/// database's may drift; the renewal's round trip counts against it).
pub const MARGIN: Duration = Duration::from_secs(2);
/// Leases a host takes in one round (free ones: a dead host's, new integrations).
pub const ACQUIRE_PER_ROUND: i64 = 256;
/// Leases a host above its share lets go of in one round.
pub const RELEASE_PER_ROUND: usize = 8;
/// The channel a host's webhook handler notifies when it took a notification for an
/// integration another host runs.
pub const INBOX_CHANNEL: &str = "presence_inbox";
/// The channel the admin API notifies when it created, changed or deleted an integration.
pub const REGISTRY_CHANNEL: &str = "presence_registry";
/// The channel a host notifies when it wrote an admin call or line event for an integration
/// another host runs (payload: the integration).
pub const CALL_CHANNEL: &str = "presence_call";
/// The channel the owner notifies when it answered a call (payload: `<caller>/<call id>`).
pub const ANSWER_CHANNEL: &str = "presence_answer";

/// A lease this host holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    /// Until when this host may act for the integration, by its own clock.
    valid_until: Instant,
}

/// This host's leases.
pub struct Leases {
    store: Arc<PgStore>,
    /// This host's id in the `host` and `lease` tables.
    pub me: String,
    held: Mutex<HashMap<String, Held>>,
    /// Takeovers and hand-overs so far (metrics, tests).
    pub(crate) stats: Mutex<LeaseStats>,
    /// What happened to webhooks taken here for integrations other hosts run.
    elsewhere: Mutex<BTreeMap<String, u64>>,
    /// Integrations that did not start here, and when: not taken again for
    /// [`START_FAILED_PAUSE`] (another host may start them; a broken one does not bounce
    /// between hosts every round).
    failed: Mutex<HashMap<String, Instant>>,
}

/// How long a host leaves alone an integration that did not start on it.
pub const START_FAILED_PAUSE: Duration = Duration::from_secs(30);

/// What the keeper did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LeaseStats {
    /// Leases taken (free or expired).
    pub acquired: u64,
    /// Leases let go of to balance, or at a stop.
    pub released: u64,
    /// Leases found taken over by another host.
    pub lost: u64,
    /// Renewal rounds that failed (database unreachable).
    pub renew_failed: u64,
    /// Rounds done.
    pub rounds: u64,
}

/// What the keeper saw of the fleet in one round.
#[derive(Debug, Clone)]
pub struct View {
    /// Hosts seen within [`LEASE_TTL`], and the leases each holds, by id.
    pub live: BTreeMap<String, usize>,
    /// Integrations (lease rows).
    pub total: usize,
}

/// What a host does in a round, holding `have` leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Take up to this many free leases.
    Take(i64),
    /// Hand this many over (stopping each first).
    HandOver(usize),
    /// Nothing to change.
    Hold,
}

/// The round's plan of host `me`, holding `have` leases: towards [`share`], at most
/// [`ACQUIRE_PER_ROUND`] taken and [`RELEASE_PER_ROUND`] handed over.
pub fn plan(view: &View, me: &str, have: usize) -> Plan {
    let want = share(view, me);
    if have < want {
        Plan::Take(((want - have) as i64).min(ACQUIRE_PER_ROUND))
    } else if have > want {
        Plan::HandOver((have - want).min(RELEASE_PER_ROUND))
    } else {
        Plan::Hold
    }
}

/// How many leases host `me` should hold, so that every integration runs and the hosts hold
/// `total / n` each, the `total % n` that hold most one more (ties by id).
pub fn share(view: &View, me: &str) -> usize {
    let n = view.live.len().max(1);
    let (each, extra) = (view.total / n, view.total % n);
    let mut order: Vec<(&String, &usize)> = view.live.iter().collect();
    order.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let rank = order.iter().position(|(id, _)| id.as_str() == me).unwrap_or(n);
    each + usize::from(rank < extra)
}

impl Leases {
    /// The leases of host `me` on `store`.
    pub fn new(store: Arc<PgStore>, me: String) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            me,
            held: Default::default(),
            stats: Default::default(),
            elsewhere: Default::default(),
            failed: Default::default(),
        })
    }

    /// Counts a keeper round; answers whether this host may take or hand over leases in it:
    /// not in its first, which only announces it (hosts starting together then see each
    /// other before any takes a share, instead of the first taking everything and handing
    /// most of it over again).
    pub fn next_round(&self) -> bool {
        let mut s = self.stats.lock().unwrap();
        s.rounds += 1;
        s.rounds > 1
    }

    /// What the keeper did so far.
    pub fn stats(&self) -> LeaseStats {
        self.stats.lock().unwrap().clone()
    }

    /// Adds one to a counter of webhooks taken here for integrations other hosts run.
    pub fn count_elsewhere(&self, what: &str) {
        *self.elsewhere.lock().unwrap().entry(what.to_string()).or_default() += 1;
    }

    /// Those counters.
    pub fn elsewhere_counters(&self) -> BTreeMap<String, u64> {
        self.elsewhere.lock().unwrap().clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<PgStore> {
        &self.store
    }

    /// Whether this host may act for `integration` now (it holds the lease, and by its own
    /// clock the lease has not run out).
    pub fn may_act(&self, integration: &str) -> bool {
        self.held.lock().unwrap().get(integration).is_some_and(|h| h.valid_until > Instant::now())
    }

    /// The fence under which this host acts for `integration` now, if it may (see
    /// [`Leases::may_act`]).
    pub fn fence(&self, integration: &str) -> Option<crate::switchboard::Fence> {
        self.held
            .lock()
            .unwrap()
            .get(integration)
            .filter(|h| h.valid_until > Instant::now())
            .map(|h| crate::switchboard::Fence { host: self.me.clone(), token: h.token })
    }

    /// The integrations whose lease this host holds.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self.held.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// Runs `f` on the store's runtime.
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(deadpool_postgres::Pool) -> futures_util::future::BoxFuture<'static, anyhow::Result<T>>
        + Send
        + 'static,
    ) -> anyhow::Result<T> {
        let pool = self.store.pool().clone();
        self.store.handle().spawn(async move { f(pool).await }).await.context("the store's runtime stopped")?
    }

    /// Makes sure a lease row exists for each of `names` (free, unless one exists).
    pub async fn ensure(&self, names: Vec<String>) -> anyhow::Result<()> {
        self.db(move |pool| {
            Box::pin(async move {
                let c = pool.get().await?;
                c.execute(
                    "INSERT INTO lease (integration) SELECT unnest($1::TEXT[]) ON CONFLICT (integration) DO NOTHING",
                    &[&names],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Removes the lease row of a deleted integration.
    pub async fn forget(&self, name: &str) -> anyhow::Result<()> {
        let n = name.to_string();
        self.held.lock().unwrap().remove(name);
        self.store.let_go(name);
        self.db(move |pool| {
            Box::pin(async move {
                pool.get().await?.execute("DELETE FROM lease WHERE integration = $1", &[&n]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Announces this host and renews its leases (one transaction); answers the ones it lost (taken over while
    /// it could not renew). A failure renews nothing: the leases run out by this host's
    /// clock.
    pub async fn renew(&self) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        let held: Vec<(String, i64)> = self.held.lock().unwrap().iter().map(|(n, h)| (n.clone(), h.token)).collect();
        let (names, tokens): (Vec<String>, Vec<i64>) = held.iter().cloned().unzip();
        let me = self.me.clone();
        let ttl = LEASE_TTL.as_millis() as f64 / 1000.0;
        let renewed: Vec<String> = self
            .db(move |pool| {
                Box::pin(async move {
                    let mut c = pool.get().await?;
                    let t = c.transaction().await?;
                    t.execute(
                        "INSERT INTO host (id, seen_at) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                        &[&me],
                    )
                    .await?;
                    let rows = t
                        .query(
                            "UPDATE lease SET expires_at = now() + make_interval(secs => $4)
                             FROM unnest($2::TEXT[], $3::BIGINT[]) AS h(integration, token)
                             WHERE lease.integration = h.integration AND lease.token = h.token AND lease.owner = $1
                             RETURNING lease.integration",
                            &[&me, &names, &tokens, &ttl],
                        )
                        .await?;
                    t.commit().await?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
            })
            .await?;
        let mut held = self.held.lock().unwrap();
        let mut lost = Vec::new();
        for (name, _) in held.clone() {
            if renewed.contains(&name) {
                held.get_mut(&name).expect("held").valid_until = started + LEASE_TTL - MARGIN;
            } else {
                held.remove(&name);
                self.store.let_go(&name);
                lost.push(name);
            }
        }
        self.stats.lock().unwrap().lost += lost.len() as u64;
        Ok(lost)
    }

    /// The hosts alive and what they hold.
    pub async fn view(&self) -> anyhow::Result<View> {
        let ttl = LEASE_TTL.as_millis() as f64 / 1000.0;
        self.db(move |pool| {
            Box::pin(async move {
                let c = pool.get().await?;
                let rows = c
                    .query(
                        "SELECT h.id, COUNT(l.integration) FROM host h
                         LEFT JOIN lease l ON l.owner = h.id AND l.expires_at > now()
                         WHERE h.seen_at > now() - make_interval(secs => $1)
                         GROUP BY h.id",
                        &[&ttl],
                    )
                    .await?;
                let live = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize)).collect();
                let total: i64 = c.query_one("SELECT COUNT(*) FROM lease", &[]).await?.get(0);
                Ok(View { live, total: total as usize })
            })
        })
        .await
    }

    /// `name` did not start here: it is not taken again for [`START_FAILED_PAUSE`].
    pub fn start_failed(&self, name: &str) {
        self.failed.lock().unwrap().insert(name.to_string(), Instant::now());
    }

    /// Takes up to `n` free leases; answers them (this host may act for them from now).
    pub async fn acquire(&self, n: i64) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        let me = self.me.clone();
        let skip: Vec<String> = {
            let mut failed = self.failed.lock().unwrap();
            failed.retain(|_, at| at.elapsed() < START_FAILED_PAUSE);
            failed.keys().cloned().collect()
        };
        let ttl = LEASE_TTL.as_millis() as f64 / 1000.0;
        let taken: Vec<(String, i64)> = self
            .db(move |pool| {
                Box::pin(async move {
                    let c = pool.get().await?;
                    let rows = c
                        .query(
                            "UPDATE lease SET owner = $1, token = token + 1, expires_at = now() + make_interval(secs => $3)
                             WHERE integration IN (
                                 SELECT integration FROM lease WHERE expires_at <= now() AND integration <> ALL($4)
                                 ORDER BY integration LIMIT $2 FOR UPDATE SKIP LOCKED)
                             RETURNING integration, token",
                            &[&me, &n, &ttl, &skip],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                })
            })
            .await?;
        let mut held = self.held.lock().unwrap();
        for (name, token) in &taken {
            self.store.hold(name, *token);
            held.insert(name.clone(), Held { token: *token, valid_until: started + LEASE_TTL - MARGIN });
        }
        self.stats.lock().unwrap().acquired += taken.len() as u64;
        Ok(taken.into_iter().map(|(n, _)| n).collect())
    }

    /// Lets go of `name` (its integration stopped here): free for any host at once.
    pub async fn release(&self, name: &str) -> anyhow::Result<()> {
        let Some(h) = self.held.lock().unwrap().remove(name) else { return Ok(()) };
        self.store.let_go(name);
        let (n, me) = (name.to_string(), self.me.clone());
        self.stats.lock().unwrap().released += 1;
        self.db(move |pool| {
            Box::pin(async move {
                pool.get()
                    .await?
                    .execute(
                        "UPDATE lease SET owner = NULL, expires_at = '-infinity' WHERE integration = $1 AND owner = $2 AND token = $3",
                        &[&n, &me, &h.token],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Which of `names` have rows in the inbox.
    pub(crate) async fn with_inbox_rows(&self, names: Vec<String>) -> anyhow::Result<Vec<String>> {
        self.db(move |pool| {
            Box::pin(async move {
                let rows = pool
                    .get()
                    .await?
                    .query("SELECT DISTINCT integration FROM inbox WHERE integration = ANY($1)", &[&names])
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
        })
        .await
    }

    /// Tells the other hosts (`NOTIFY channel, payload`).
    pub async fn notify(&self, channel: &'static str, payload: &str) -> anyhow::Result<()> {
        let p = payload.to_string();
        self.db(move |pool| {
            Box::pin(async move {
                pool.get().await?.execute("SELECT pg_notify($1, $2)", &[&channel, &p]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Listens to the fleet's channels on a connection of its own
    /// (reconnecting after a failure): each notification is sent as `(channel, payload)`.
    pub fn listen(&self, tx: mpsc::Sender<(String, String)>) {
        let config = self.store.config().clone();
        self.store.handle().spawn(async move {
            loop {
                match listen_once(&config, &tx).await {
                    Ok(()) => return, // nobody listens any more
                    Err(e) => {
                        if tx.is_closed() {
                            return; // the host stopped meanwhile
                        }
                        tracing::warn!("PostgreSQL notifications lost ({e:#}); listening again in 1 s");
                        // What was missed is found at the next round anyway.
                        if tx.send(("reconnected".into(), String::new())).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

async fn listen_once(config: &tokio_postgres::Config, tx: &mpsc::Sender<(String, String)>) -> anyhow::Result<()> {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if ntx.send((n.channel().to_string(), n.payload().to_string())).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!(
            "LISTEN {INBOX_CHANNEL}; LISTEN {REGISTRY_CHANNEL}; LISTEN {CALL_CHANNEL}; LISTEN {ANSWER_CHANNEL}"
        ))
        .await?;
    loop {
        let n = tokio::select! {
            n = nrx.recv() => n,
            // The host stopped: nobody listens any more.
            _ = tx.closed() => None,
        };
        let Some(n) = n else { break };
        if tx.send(n).await.is_err() {
            driver.abort();
            return Ok(());
        }
    }
    if tx.is_closed() {
        driver.abort();
        return Ok(());
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => anyhow::bail!("the connection closed"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(live: &[(&str, usize)], total: usize) -> View {
        View { live: live.iter().map(|(h, n)| (h.to_string(), *n)).collect(), total }
    }

    #[test]
    fn shares_add_up_and_move_nothing_without_need() {
        // Three hosts, six integrations: two each, whoever holds what now.
        for live in [[("a", 0), ("b", 0), ("c", 0)], [("a", 3), ("b", 3), ("c", 0)], [("a", 2), ("b", 2), ("c", 2)]] {
            let v = view(&live, 6);
            assert_eq!(["a", "b", "c"].map(|h| share(&v, h)), [2, 2, 2]);
        }
        // Seven: the one that holds most keeps the extra one (no move).
        let v = view(&[("a", 2), ("b", 3), ("c", 2)], 7);
        assert_eq!(["a", "b", "c"].map(|h| share(&v, h)), [2, 3, 2]);
        // A host died: two left share all six.
        let v = view(&[("a", 2), ("c", 2)], 6);
        assert_eq!(["a", "c"].map(|h| share(&v, h)), [3, 3]);
        // The sum is always the total.
        for total in 0..40 {
            let v = view(&[("a", 5), ("b", 0), ("c", 1), ("d", 9)], total);
            assert_eq!(["a", "b", "c", "d"].map(|h| share(&v, h)).iter().sum::<usize>(), total);
        }
    }

    /// A host frozen inside a transaction (SIGSTOP while a write held the lease row) does not
    /// keep the others from taking its integration over: the server ends its session.
    #[test]
    fn a_host_frozen_inside_a_transaction_holds_no_lease_hostage() {
        use crate::store::StateStore;
        use crate::store::postgres::{IDLE_IN_TRANSACTION, scratch_database, test_server_url};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = rt.block_on(scratch_database(&test_server_url(), "lease")).unwrap();
        let frozen = PgStore::connect_host(&url, "frozen").unwrap();
        let pool = frozen.pool().clone();
        // The frozen host's write: the lease row locked as every fenced write locks it, a
        // row of the integration's state written, and then nothing more is ever sent.
        let (locked, is_locked) = std::sync::mpsc::channel();
        frozen.handle().spawn(async move {
            let mut c = pool.get().await.unwrap();
            c.batch_execute(
                "INSERT INTO lease (integration, owner, token, expires_at) VALUES ('f', 'frozen', 1, now() + interval '1 second')",
            )
            .await
            .unwrap();
            let t = c.transaction().await.unwrap();
            t.batch_execute(
                "SELECT token FROM lease WHERE integration = 'f' FOR SHARE;
                 INSERT INTO kv (integration, key, value) VALUES ('f', 'k', 'frozen')",
            )
            .await
            .unwrap();
            locked.send(()).unwrap();
            // Holds the transaction (and the connection) as a stopped process would.
            std::future::pending::<()>().await;
            drop(t);
        });
        is_locked.recv().unwrap();
        let other = Arc::new(PgStore::connect_host(&url, "other").unwrap());
        let leases = Leases::new(other.clone(), "other".into());
        let start = Instant::now();
        loop {
            if rt.block_on(leases.acquire(1)).unwrap() == ["f"] {
                break;
            }
            assert!(
                start.elapsed() < LEASE_TTL + IDLE_IN_TRANSACTION * 4,
                "the lease of a host frozen inside a transaction was never taken over"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The new owner writes the state the frozen host had locked.
        other.set("f", "k", b"mine").unwrap();
        assert_eq!(other.get("f", "k").unwrap(), Some(b"mine".to_vec()));
    }
}
