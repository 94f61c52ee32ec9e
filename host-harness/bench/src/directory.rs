//! Switchboard users who come and go: one request of many changes to a synced switchboard,
//! until every changed user shows its presence and is covered by a subscription.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};
use switchboard_sim::User;

use crate::common::*;

/// What one round of changes cost.
pub(crate) struct ChangeRound {
    /// From the change until every changed user shows its Microsoft user's presence.
    pub shown_s: f64,
    /// From the change until every changed user is in a subscription at the emulator.
    pub covered_s: f64,
    /// Subscriptions created for the round (new ones, or each replacing one).
    pub replaced: u64,
    /// Users who stayed but moved to another integration user's subscription.
    pub moved: usize,
    /// The plugin's CPU time in guest calls during the round, ms.
    pub cpu_ms: f64,
    /// After the round: a page of 50 rows of the "Teams Presence users" list with a search,
    /// and the counts by outcome, each asked of the integration as the admin API does (ms,
    /// the median of 5).
    pub list_ms: f64,
    pub counts_ms: f64,
}

/// Which integration user covers each Microsoft user at the emulator.
fn covering(sc: &Scenario) -> HashMap<String, String> {
    let mut by_user = HashMap::new();
    for s in sc.emulator.subscriptions() {
        for u in &s.user_ids {
            by_user.insert(u.clone(), s.creator_id.clone());
        }
    }
    by_user
}

/// `users` switchboard users (one integration user per 650, plus one), synced; then one
/// request of `changes` changes: 40 % leave, 40 % join (Microsoft users not in the switchboard
/// yet), 20 % change address to another such Microsoft user.
pub(crate) async fn change_round(users: usize, changes: usize) -> anyhow::Result<ChangeRound> {
    let (leave, join) = (changes * 2 / 5, changes * 2 / 5);
    let moves = changes - leave - join;
    let dir = state_dir("directory");
    let mut opts = ScenarioOptions::new(users + join + moves, users.div_ceil(650) + 1, dir.clone());
    opts.switchboard_users = Some(users);
    opts.directory_delta_interval_s = 3600;
    let sc = Scenario::start(opts).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    // A switchboard's changes normally come long after its last read: let the spacing between
    // two reads (2 s after the initial one) pass, so it does not count here.
    tokio::time::sleep(Duration::from_millis(presence_core::core::SWITCHBOARD_REREAD_MS + 500)).await;
    let before = covering(&sc);
    let posts = sc.emulator.count("POST /v1.0/subscriptions");
    let cpu = |s: &presence_host::StatusView| s.total_calls_cpu_us.values().sum::<u64>();
    let cpu_before = cpu(&sc.status().await);

    let step = users / leave.max(1);
    let leavers: Vec<String> = (0..leave).map(|i| format!("sb-{:05}", i * step)).collect();
    let mut upsert: Vec<User> = (0..join)
        .map(|i| User {
            id: format!("sb-new-{i:06}"),
            name: format!("Joiner {i}"),
            emails: vec![sc.seed.user_email(users + i)],
            line_number: None,
            active: true,
        })
        .collect();
    let leaving: std::collections::HashSet<&String> = leavers.iter().collect();
    let staying: Vec<User> = sc.switchboard.users().into_iter().filter(|u| !leaving.contains(&u.id)).collect();
    let step = (staying.len() / moves.max(1)).max(1);
    let movers: Vec<User> = (0..moves)
        .filter_map(|k| staying.get(k * step + 1).cloned())
        .enumerate()
        .map(|(k, u)| User { emails: vec![sc.seed.user_email(users + join + k)], ..u })
        .collect();
    anyhow::ensure!(movers.len() == moves, "only {} users to move", movers.len());
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for (i, u) in upsert.iter().enumerate() {
        expected.insert(u.id.clone(), sc.ms_user(users + i));
    }
    for (k, u) in movers.iter().enumerate() {
        expected.insert(u.id.clone(), sc.ms_user(users + join + k));
    }
    upsert.extend(movers);

    let t0 = Instant::now();
    sc.switchboard.change(upsert, &leavers).map_err(anyhow::Error::msg)?;
    let end = t0 + Duration::from_secs(600);
    let shown = |sc: &Scenario| {
        let truth = sc.emulator.truth(&sc.seed.tenant_id);
        expected.iter().all(|(sb, ms)| {
            sc.switchboard.shown(sb).is_some_and(|s| {
                s.microsoft_user_id == *ms
                    && truth.get(ms).is_some_and(|t| (&t.0, &t.1) == (&s.availability, &s.activity))
            })
        })
    };
    while !shown(&sc) {
        anyhow::ensure!(Instant::now() < end, "the changed users were never shown");
        sc.switchboard.wait_change(Duration::from_millis(10)).await;
    }
    let shown_s = t0.elapsed().as_secs_f64();
    loop {
        let c = covering(&sc);
        if expected.values().all(|ms| c.contains_key(ms)) {
            break;
        }
        anyhow::ensure!(Instant::now() < end, "the changed users were never covered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let covered_s = t0.elapsed().as_secs_f64();
    let after = covering(&sc);
    let moved = before.iter().filter(|(u, who)| after.get(*u).is_some_and(|w| w != *who)).count();
    let s = sc.settle(Duration::from_secs(60)).await;
    let h = sc.host().integrations().values().next().expect("an integration").clone();
    let (mut list, mut counts) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let q = presence_host::status::UsersQuery {
            search: format!("user {:05}", i * 7 + 1),
            filter: presence_host::status::UsersFilter::All,
            offset: 0,
            limit: 50,
        };
        let t = Instant::now();
        let page = h.users_page(q).await?.ok_or_else(|| anyhow::anyhow!("no users list"))?;
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.total >= 1, "the search found nobody");
        let t = Instant::now();
        h.mapping_counts().await?.ok_or_else(|| anyhow::anyhow!("no counts"))?;
        counts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let round = ChangeRound {
        list_ms: median(list),
        counts_ms: median(counts),
        shown_s,
        covered_s,
        replaced: sc.emulator.count("POST /v1.0/subscriptions") - posts,
        moved,
        cpu_ms: (cpu(&s) - cpu_before) as f64 / 1000.0,
    };
    stop(sc, dir).await;
    Ok(round)
}
