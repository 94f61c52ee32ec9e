//! A plugin trap restarts that integration's instance from its persisted state; the other
//! integrations on the host do not notice.

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_restarts_only_that_integration_from_its_persisted_state() {
    let t = start(30, 1, |o| o.second_integration = Some("fabrikam".into())).await;
    let host = t.host.as_ref().unwrap();
    let all = host.integrations();
    let (contoso, fabrikam) = (&all["contoso"], &all["fabrikam"]);
    for h in [contoso, fabrikam] {
        let end = std::time::Instant::now() + EVENTUALLY;
        while h.status().await.unwrap().state != "ok" && std::time::Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let subs_before: std::collections::BTreeSet<String> =
        t.emulator.subscriptions().into_iter().map(|s| s.id).collect();
    assert_eq!(subs_before.len(), 2, "one per integration: {:?}", fabrikam.status().await);
    let fabrikam_before = fabrikam.status().await.unwrap();
    let full_reads = t.emulator.count("GET /v1.0/users");

    // A real trap: the next guest call of contoso's instance runs into its epoch deadline.
    contoso.interrupt_next_call().await;
    let s = t.wait_status(EVENTUALLY, |s| s.traps == 1 && s.state == "ok").await;
    assert_eq!(s.traps, 1, "{s:?}");
    assert!(s.last_trap.as_deref().unwrap_or("").contains("interrupt"), "{:?}", s.last_trap);
    assert_eq!(s.state, "ok", "restarted and healthy");
    assert_eq!(s.users, 30, "the mapping came back");
    assert_eq!(t.emulator.count("GET /v1.0/users"), full_reads, "from persisted state, without a full re-read");
    let subs_after: std::collections::BTreeSet<String> = t.emulator.subscriptions().into_iter().map(|s| s.id).collect();
    assert_eq!(subs_before, subs_after, "the persisted subscriptions were resumed, none duplicated");

    // The other integration did not notice.
    let f = fabrikam.status().await.unwrap();
    assert_eq!(f.traps, 0);
    assert_eq!(f.state, "ok");
    assert_eq!(f.counters.get("notifications.accepted"), fabrikam_before.counters.get("notifications.accepted"));

    // Both keep synchronising.
    let u = t.ms_user(7);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "DoNotDisturb", "Presenting", false);
    let seed2 = t.second_seed.clone().unwrap();
    let u2 = t.emulator.with_tenant(&seed2.tenant_id, |tn| tn.users[7].id.clone());
    t.emulator.set_presence(&seed2.tenant_id, &u2, "DoNotDisturb", "Presenting", false);
    let second = t.second_switchboard.clone().unwrap();
    let both = t
        .wait_until(EVENTUALLY, || {
            [&t.switchboard, &second].iter().all(|sb| sb.shown("sb-00007").is_some_and(|p| p.activity == "Presenting"))
        })
        .await;
    assert!(both);
}
