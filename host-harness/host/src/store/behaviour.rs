//! The behaviour every [`StateStore`] shows, run against each store the host ships (SQLite
//! and PostgreSQL): a platform's own store can be checked the same way.

use super::{StateStore, StoredKey};

/// Runs every behaviour test on `open()`: each call must open the same, initially empty,
/// state (a second call stands for a restart, or another host on the same database).
pub(crate) fn all(open: &dyn Fn() -> Box<dyn StateStore>) {
    let s = open();
    key_values_are_scoped_listed_in_byte_order_and_deleted(&*s);
    a_backup_is_put_back_whole(&*s);
    the_inbox_keeps_order_size_and_scope(&*s);
    keys_releases_credentials_and_records(&*s);
    a_purge_removes_everything_but_the_record(&*s);
    // What one opening wrote, the next sees.
    let again = open();
    assert_eq!(again.get("durable", "k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(again.inbox_size("durable").unwrap(), (1, 4));
    assert_eq!(again.key("durable").unwrap().unwrap().cert_id, "c1");
}

fn key_values_are_scoped_listed_in_byte_order_and_deleted(s: &dyn StateStore) {
    assert_eq!(s.get("a", "k").unwrap(), None);
    s.set("a", "k", b"1").unwrap();
    s.set("a", "k", b"22").unwrap();
    s.set("b", "k", b"other").unwrap();
    for k in ["map/b", "map/a", "map/Z", "map/\u{e9}", "other"] {
        s.set("a", k, k.as_bytes()).unwrap();
    }
    assert_eq!(s.get("a", "k").unwrap(), Some(b"22".to_vec()), "a set replaces");
    assert_eq!(s.get("b", "k").unwrap(), Some(b"other".to_vec()), "integrations do not share keys");
    assert_eq!(s.keys("a", "map/").unwrap(), ["map/Z", "map/a", "map/b", "map/\u{e9}"], "byte order, prefix only");
    assert_eq!(s.keys("a", "").unwrap().len(), 6);
    assert_eq!(s.keys("a", "map%").unwrap(), Vec::<String>::new(), "a prefix is literal, not a pattern");
    s.delete("a", "map/a").unwrap();
    s.delete("a", "never-there").unwrap();
    assert_eq!(s.get("a", "map/a").unwrap(), None);
    assert_eq!(s.keys("a", "map/").unwrap().len(), 3);
    s.set("durable", "k", b"v").unwrap();
}

fn a_backup_is_put_back_whole(s: &dyn StateStore) {
    s.set("swap", "kept", b"before").unwrap();
    s.set("swap", "changed", b"before").unwrap();
    s.kv_backup("swap").unwrap();
    s.set("swap", "changed", b"after").unwrap();
    s.set("swap", "added", b"after").unwrap();
    s.delete("swap", "kept").unwrap();
    s.kv_restore("swap").unwrap();
    assert_eq!(s.keys("swap", "").unwrap(), ["changed", "kept"]);
    assert_eq!(s.get("swap", "changed").unwrap(), Some(b"before".to_vec()));
    // A second backup replaces the first.
    s.set("swap", "new", b"x").unwrap();
    s.kv_backup("swap").unwrap();
    s.delete("swap", "new").unwrap();
    s.kv_restore("swap").unwrap();
    assert_eq!(s.keys("swap", "").unwrap(), ["changed", "kept", "new"]);
}

fn the_inbox_keeps_order_size_and_scope(s: &dyn StateStore) {
    let a1 = s.inbox_push("in", "notifications", b"one", 10).unwrap();
    let other = s.inbox_push("in-other", "notifications", b"elsewhere", 11).unwrap();
    let a2 = s.inbox_push("in", "lifecycle", b"two!", 12).unwrap();
    let a3 = s.inbox_push("in", "notifications", b"three", 13).unwrap();
    assert!(a1 < a2 && a2 < a3, "ids grow");
    assert_eq!(s.inbox_size("in").unwrap(), (3, 12));
    let rows = s.inbox_after("in", 0, 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [a1, a2, a3]);
    assert_eq!((rows[1].kind.as_str(), rows[1].body.as_slice(), rows[1].received_ms), ("lifecycle", &b"two!"[..], 12));
    assert_eq!(s.inbox_after("in", a1, 1).unwrap()[0].id, a2, "after an id, at most the limit");
    s.inbox_delete_many(&[a1, a2]).unwrap();
    s.inbox_delete(a3).unwrap();
    assert_eq!(s.inbox_size("in").unwrap(), (0, 0));
    assert_eq!(s.inbox_after("in-other", 0, 10).unwrap()[0].id, other, "another integration's row stays");
    s.inbox_push("durable", "notifications", b"body", 1).unwrap();
}

fn keys_releases_credentials_and_records(s: &dyn StateStore) {
    assert!(s.key("k").unwrap().is_none());
    let key = |id: &str| StoredKey { cert_id: id.into(), pkcs8: vec![1, 2, 3], cert_der: vec![4, 5] };
    s.put_key("k", &key("c0")).unwrap();
    s.put_key("k", &key("c1")).unwrap();
    let got = s.key("k").unwrap().unwrap();
    assert_eq!((got.cert_id.as_str(), got.pkcs8, got.cert_der), ("c1", vec![1, 2, 3], vec![4, 5]));
    s.put_key("durable", &key("c1")).unwrap();

    s.put_swapped_release("r", "sha-of-config", b"wasm").unwrap();
    assert_eq!(s.swapped_release("r", "sha-of-config").unwrap(), Some(b"wasm".to_vec()));
    assert_eq!(s.swapped_release("r", "another-config").unwrap(), None, "another configuration drops it");
    assert_eq!(s.swapped_release("r", "sha-of-config").unwrap(), None, "and it stays dropped");

    s.put_credential("c", "Alice@Contoso.com", b"one").unwrap();
    s.put_credential("c", "alice@contoso.com", b"two").unwrap();
    assert_eq!(s.credential("c", "ALICE@contoso.com").unwrap(), Some(b"two".to_vec()), "usernames ignore case");
    assert_eq!(s.credential("other", "alice@contoso.com").unwrap(), None);

    s.put_integration_record("zeta", b"z").unwrap();
    s.put_integration_record("alpha", b"a0").unwrap();
    s.put_integration_record("alpha", b"a1").unwrap();
    let records = s.integration_records().unwrap();
    assert_eq!(records, [("alpha".to_string(), b"a1".to_vec()), ("zeta".to_string(), b"z".to_vec())]);
}

fn a_purge_removes_everything_but_the_record(s: &dyn StateStore) {
    let i = "gone";
    s.set(i, "k", b"v").unwrap();
    s.kv_backup(i).unwrap();
    s.inbox_push(i, "notifications", b"x", 0).unwrap();
    s.put_key(i, &StoredKey { cert_id: "c".into(), pkcs8: vec![1], cert_der: vec![2] }).unwrap();
    s.put_swapped_release(i, "sha", b"wasm").unwrap();
    s.put_credential(i, "u@x", b"t").unwrap();
    s.put_integration_record(i, b"record").unwrap();
    s.set("kept", "k", b"v").unwrap();
    s.purge(i).unwrap();
    assert_eq!(s.get(i, "k").unwrap(), None);
    s.kv_restore(i).unwrap();
    assert_eq!(s.keys(i, "").unwrap(), Vec::<String>::new(), "the backup went too");
    assert_eq!(s.inbox_size(i).unwrap(), (0, 0));
    assert!(s.key(i).unwrap().is_none());
    assert_eq!(s.swapped_release(i, "sha").unwrap(), None);
    assert_eq!(s.credential(i, "u@x").unwrap(), None);
    assert!(s.integration_records().unwrap().iter().any(|(n, _)| n == i), "the record stays");
    assert_eq!(s.get("kept", "k").unwrap(), Some(b"v".to_vec()), "another integration is untouched");
}
