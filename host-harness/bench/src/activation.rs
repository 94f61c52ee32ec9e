//! Activation after Save: an operator adds an integration through the admin API (as the admin
//! page's Save does) for a tenant whose users the switchboard already lists; measured until
//! every switchboard user shows its Teams presence.

use std::time::{Duration, Instant};

use presence_demo::{DEMO_SECRET, Scenario, ScenarioOptions};

use crate::common::*;

/// What one activation took.
pub(crate) struct Activation {
    /// From the request until the API answered `201` (stored and started).
    pub saved_s: f64,
    /// From the request until every switchboard user shows its presence.
    pub synced_s: f64,
}

/// `users` users (one integration user per 650): the integration is deleted through the API
/// (nothing of it stays: state, subscriptions, what the switchboard showed), then created
/// again through the API with the same settings.
pub(crate) async fn activation(users: usize) -> anyhow::Result<Activation> {
    let dir = state_dir("activation");
    let sc = Scenario::start(ScenarioOptions::new(users, users.div_ceil(650), dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    let admin = sc.admin_client();
    let r = admin.delete(sc.admin_url("/integrations/contoso")).send().await?;
    anyhow::ensure!(r.status().is_success(), "delete: {}", r.text().await?);
    anyhow::ensure!(sc.switchboard.all_shown().is_empty(), "the switchboard still shows presence after the delete");
    let spec = serde_json::json!({
        "name": "contoso",
        "tenant_id": sc.seed.tenant_id,
        "client_id": sc.config.integrations[0].client_id,
        "client_secret": DEMO_SECRET,
        "users": (0..users.div_ceil(650)).map(|n| serde_json::json!({
            "username": sc.seed.integration_user(n),
            "password": sc.seed.integration_password,
        })).collect::<Vec<_>>(),
        "push_line_status": true,
    });
    let t0 = Instant::now();
    let r = admin
        .post(sc.admin_url("/integrations"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await?;
    let saved_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(r.status().as_u16() == 201, "create: {}", r.text().await?);
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced after the Save", left.len());
    let synced_s = t0.elapsed().as_secs_f64();
    stop(sc, dir).await;
    Ok(Activation { saved_s, synced_s })
}
