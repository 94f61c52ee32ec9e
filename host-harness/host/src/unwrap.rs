//! Parallel RSA-OAEP unwraps of one integration's notification keys.
//!
//! Each encrypted rich notification needs one RSA-OAEP-2048 private-key operation (its
//! `dataKey`), by far the largest part of its cost. The plugin processes an integration's
//! notifications in order, one guest call at a time, so if the unwrap ran inside that call the
//! integration could never pass one core's RSA rate. Instead the host unwraps speculatively:
//!
//! - when the webhook takes a batch (its `dataKey`s are read along with the envelope check),
//!   and when the actor reads rows from the inbox (rows a restart replayed, or another host
//!   stored), each key is queued on a host-wide pool of one thread per core ([`Unwraps::start`]);
//! - before the actor offers a row to the plugin it waits for the row's keys a pool thread is
//!   unwrapping, outside the guest call ([`Unwraps::ready`]);
//! - inside the guest call, `crypto.unwrap-key` finds the key done ([`Unwraps::take`]); one
//!   still queued (the pool is behind: an integration never waits behind another's queue) is
//!   unwrapped there, and so is one the host did not see, as it always was. So a forged item
//!   the plugin rejects (wrong clientState) costs the actor no RSA.
//!
//! The plugin still validates everything (clientState, the HMAC signature, the certificate id,
//! the sequence); the host only does the RSA step early. What the host reads of a body is the
//! certificate id and the wrapped key, nothing it acts on. The slots are bounded
//! ([`MAX_SLOTS`]) and removed once their row is processed ([`Unwraps::forget`]), so a burst
//! costs CPU, never memory without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;

use crate::keys::NotificationKey;
use crate::sandbox::thread_cpu;

/// Slots (keys queued, being unwrapped or done and not yet taken) one integration may hold;
/// beyond it a key is unwrapped when the plugin asks for it (about 300 bytes a slot).
pub const MAX_SLOTS: usize = 2048;

/// A notification's wrapped key, as the host read it from a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    /// `encryptionCertificateId`.
    pub certificate_id: String,
    /// `dataKey`, base64-decoded.
    pub wrapped: Vec<u8>,
}

/// Reads a notification body's envelope (`{"value": [ ... ]}`; an error names what is wrong)
/// and the wrapped keys of its encrypted items. An item whose key does not read is left to
/// the plugin, which rejects it.
pub fn read_envelope(body: &[u8]) -> Result<Vec<DataKey>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        value: Vec<Item<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        #[serde(rename = "encryptedContent", default, borrow)]
        encrypted: Option<&'a serde_json::value::RawValue>,
    }
    /// The two fields the host needs; the ciphertext (`data`, most of the body) is skipped,
    /// not copied.
    #[derive(serde::Deserialize)]
    struct Wrapped {
        #[serde(rename = "dataKey")]
        data_key: String,
        #[serde(rename = "encryptionCertificateId")]
        certificate_id: String,
    }
    let env: Envelope = serde_json::from_slice(body)?;
    Ok(env
        .value
        .into_iter()
        .filter_map(|item| {
            // An item whose key does not read this way is the plugin's to reject.
            let w: Wrapped = serde_json::from_str(item.encrypted?.get()).ok()?;
            let wrapped = base64::engine::general_purpose::STANDARD.decode(w.data_key).ok()?;
            Some(DataKey { certificate_id: w.certificate_id, wrapped })
        })
        .collect())
}

/// The host-wide pool the unwraps run on: one thread per core.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("tps-unwrap-{i}"))
            .build()
            .expect("the unwrap pool starts")
    })
}

const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;

/// One key: queued, being unwrapped, or done.
struct Slot {
    state: AtomicU8,
    result: OnceLock<Option<Vec<u8>>>,
    done: tokio::sync::Notify,
}

impl Slot {
    /// Whether the caller won the key (it then unwraps it and calls [`Slot::finish`]).
    fn claim(&self) -> bool {
        self.state.compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
    fn finish(&self, result: Option<Vec<u8>>) {
        let _ = self.result.set(result);
        self.done.notify_waiters();
    }
    async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.result.get().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// Where each unwrap ran, and the CPU they took.
#[derive(Debug, Default)]
pub struct UnwrapCounts {
    /// Done on the pool before the plugin asked.
    pub parallel: AtomicU64,
    /// Still queued when the plugin asked for it: done inside the guest call.
    pub in_call: AtomicU64,
    /// Not seen by the host: done inside the guest call.
    pub on_demand: AtomicU64,
    /// CPU time of the pool's unwraps (µs).
    pub cpu_us: AtomicU64,
    /// CPU time of the unwraps done in guest calls (µs; part of those calls' CPU time too).
    pub in_call_cpu_us: AtomicU64,
}

/// One integration's unwraps.
pub struct Unwraps {
    key: Arc<NotificationKey>,
    slots: Mutex<HashMap<Vec<u8>, Arc<Slot>>>,
    /// Where they ran.
    pub counts: Arc<UnwrapCounts>,
}

impl Unwraps {
    /// The unwraps of the integration whose key is `key`.
    pub fn new(key: Arc<NotificationKey>) -> Unwraps {
        Unwraps { key, slots: Mutex::new(HashMap::new()), counts: Default::default() }
    }

    /// Queues the unwraps of `keys` on the pool (keys of another certificate, and keys already
    /// queued, are skipped), while the integration holds fewer than [`MAX_SLOTS`]; beyond
    /// that a key is unwrapped when the plugin asks for it.
    pub fn start(&self, keys: &[DataKey]) {
        let mut slots = self.slots.lock().unwrap();
        for k in keys {
            if k.certificate_id != self.key.cert_id || slots.contains_key(&k.wrapped) {
                continue;
            }
            if slots.len() >= MAX_SLOTS {
                return;
            }
            let slot =
                Arc::new(Slot { state: AtomicU8::new(QUEUED), result: OnceLock::new(), done: Default::default() });
            slots.insert(k.wrapped.clone(), slot.clone());
            let (key, counts, wrapped) = (self.key.clone(), self.counts.clone(), k.wrapped.clone());
            pool().spawn(move || {
                if slot.claim() {
                    let r = timed(&counts.cpu_us, || key.unwrap(&wrapped));
                    counts.parallel.fetch_add(1, Ordering::Relaxed);
                    slot.finish(r);
                }
            });
        }
    }

    /// Waits for the unwraps of `keys` a pool thread is doing (outside the guest call, which
    /// never yields). A key still queued is left to the plugin: if it asks for it (only after
    /// the item's subscription and clientState checked out), [`Unwraps::take`] unwraps it then,
    /// so an item the plugin rejects costs the actor no RSA, and no integration waits behind
    /// another's queue.
    pub async fn ready(&self, keys: &[DataKey]) {
        for k in keys {
            let Some(slot) = self.slots.lock().unwrap().get(&k.wrapped).cloned() else {
                continue;
            };
            if slot.state.load(Ordering::Acquire) == CLAIMED {
                slot.wait().await;
            }
        }
    }

    /// The unwrapped key of `wrapped` (`None`: RSA-OAEP failed), from its slot when it is done,
    /// else unwrapped now. The caller has checked the certificate id.
    pub fn take(&self, wrapped: &[u8]) -> Option<Vec<u8>> {
        let slot = self.slots.lock().unwrap().remove(wrapped);
        if let Some(slot) = slot {
            if let Some(r) = slot.result.get() {
                return r.clone();
            }
            if slot.claim() {
                // Still queued when the plugin asked: unwrapped here, in the call.
                self.counts.in_call.fetch_add(1, Ordering::Relaxed);
                let r = timed(&self.counts.in_call_cpu_us, || self.key.unwrap(wrapped));
                slot.finish(r.clone());
                return r;
            }
            // A pool thread took it up after the actor looked: its result, in at most one
            // RSA operation's time (not unwrapped twice).
            return slot.result.wait().clone();
        }
        self.counts.on_demand.fetch_add(1, Ordering::Relaxed);
        timed(&self.counts.in_call_cpu_us, || self.key.unwrap(wrapped))
    }

    /// Drops the slots of `keys` (their row is processed, or was not stored).
    pub fn forget(&self, keys: &[DataKey]) {
        if keys.is_empty() {
            return;
        }
        let mut slots = self.slots.lock().unwrap();
        for k in keys {
            slots.remove(&k.wrapped);
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.slots.lock().unwrap().len()
    }
}

fn timed<T>(cpu_us: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let t0 = thread_cpu();
    let r = f();
    cpu_us.fetch_add(thread_cpu().saturating_sub(t0).as_micros() as u64, Ordering::Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey};

    fn wrap(public: &OaepPublicEncryptingKey, secret: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; public.ciphertext_size()];
        public.encrypt(&OAEP_SHA1_MGF1SHA1, secret, &mut out, None).expect("encrypts").to_vec()
    }

    fn body(items: &[(&str, &[u8])]) -> Vec<u8> {
        let value: Vec<serde_json::Value> = items
            .iter()
            .map(|(cert, wrapped)| {
                serde_json::json!({
                    "subscriptionId": "s",
                    "encryptedContent": {
                        "data": "AAAA",
                        "dataSignature": "AAAA",
                        "dataKey": base64::engine::general_purpose::STANDARD.encode(wrapped),
                        "encryptionCertificateId": cert,
                        "encryptionCertificateThumbprint": "x",
                    }
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "value": value })).unwrap()
    }

    fn n(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }

    #[test]
    fn the_envelope_is_an_object_with_a_value_list_and_its_keys_are_read() {
        assert_eq!(read_envelope(br#"{"value": []}"#).unwrap(), vec![]);
        // Items the host cannot read a key from are the plugin's to reject, not a bad envelope.
        let odd = br#"{"value": [{"a": 1}, {"encryptedContent": 5}, {"encryptedContent": {"dataKey": "!!"}}],
                       "validationTokens": ["x"]}"#;
        assert_eq!(read_envelope(odd).unwrap(), vec![]);
        for bad in [&b"[]"[..], b"{}", b"{\"value\": 1}", b"not json", b""] {
            assert!(read_envelope(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let keys = read_envelope(&body(&[("c1", b"one"), ("c2", b"two")])).unwrap();
        assert_eq!(
            keys,
            vec![
                DataKey { certificate_id: "c1".into(), wrapped: b"one".to_vec() },
                DataKey { certificate_id: "c2".into(), wrapped: b"two".to_vec() },
            ]
        );
    }

    #[tokio::test]
    async fn keys_started_early_are_unwrapped_on_the_pool_and_taken_once() {
        let (key, public) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        let secrets: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 32]).collect();
        let keys: Vec<DataKey> =
            secrets.iter().map(|s| DataKey { certificate_id: "cert".into(), wrapped: wrap(&public, s) }).collect();
        u.start(&keys);
        assert_eq!(u.held(), 8);
        // Another certificate's key is not this integration's to unwrap.
        u.start(&[DataKey { certificate_id: "other".into(), wrapped: wrap(&public, b"x") }]);
        assert_eq!(u.held(), 8);
        u.ready(&keys).await;
        for (k, s) in keys.iter().zip(&secrets) {
            assert_eq!(u.take(&k.wrapped).as_deref(), Some(&s[..]));
        }
        assert_eq!(u.held(), 0, "a taken key leaves its slot");
        let c = &u.counts;
        assert_eq!(n(&c.parallel) + n(&c.in_call), 8);
        assert_eq!(n(&c.on_demand), 0);
        assert!(n(&c.cpu_us) + n(&c.in_call_cpu_us) > 0);
        // Taken again (a replayed batch), it is unwrapped on demand, alike.
        assert_eq!(u.take(&keys[0].wrapped).as_deref(), Some(&secrets[0][..]));
        assert_eq!(n(&c.on_demand), 1);
    }

    #[tokio::test]
    async fn a_tampered_key_fails_alike_early_or_on_demand() {
        let (key, public) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        let mut bad = wrap(&public, b"secret");
        bad[7] ^= 1;
        let keys = [DataKey { certificate_id: "cert".into(), wrapped: bad.clone() }];
        u.start(&keys);
        u.ready(&keys).await;
        assert_eq!(u.take(&bad), None);
        assert_eq!(u.take(&bad), None);
        assert_eq!(n(&u.counts.on_demand), 1);
    }

    #[tokio::test]
    async fn an_integration_holds_a_bounded_number_of_slots_and_forget_frees_them() {
        let (key, _) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        // Forged keys: they cost CPU (each fails), never more than MAX_SLOTS slots.
        let keys: Vec<DataKey> = (0..MAX_SLOTS + 10)
            .map(|i| DataKey { certificate_id: "cert".into(), wrapped: (i as u32).to_be_bytes().repeat(64) })
            .collect();
        u.start(&keys);
        assert_eq!(u.held(), MAX_SLOTS);
        u.start(&keys[MAX_SLOTS..]);
        assert_eq!(u.held(), MAX_SLOTS, "still bounded");
        u.ready(&keys).await;
        u.forget(&keys);
        assert_eq!(u.held(), 0);
    }

    #[tokio::test]
    async fn a_key_still_queued_is_left_to_the_plugin_and_unwrapped_once() {
        let (key, public) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        // Fill the pool with slow work so the slot stays queued.
        let gate = Arc::new(std::sync::Barrier::new(pool().current_num_threads() + 1));
        for _ in 0..pool().current_num_threads() {
            let g = gate.clone();
            pool().spawn(move || {
                g.wait();
            });
        }
        let k = DataKey { certificate_id: "cert".into(), wrapped: wrap(&public, b"queued") };
        u.start(std::slice::from_ref(&k));
        // The actor does not unwrap it ahead (the plugin may reject the item unasked).
        u.ready(std::slice::from_ref(&k)).await;
        assert_eq!(n(&u.counts.cpu_us) + n(&u.counts.in_call_cpu_us) + n(&u.counts.in_call), 0);
        // The plugin asks: unwrapped in the call.
        assert_eq!(u.take(&k.wrapped).as_deref(), Some(&b"queued"[..]));
        assert_eq!(n(&u.counts.in_call), 1);
        gate.wait();
        // The pool's job, when it runs, finds the key claimed and does nothing.
        let done = Arc::new(std::sync::Barrier::new(2));
        let d = done.clone();
        pool().spawn(move || {
            d.wait();
        });
        done.wait();
        assert_eq!(n(&u.counts.parallel), 0);
    }

    #[tokio::test]
    async fn a_key_a_pool_thread_took_up_after_the_actor_looked_is_awaited_not_unwrapped_twice() {
        let (key, public) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        let k = DataKey { certificate_id: "cert".into(), wrapped: wrap(&public, b"late") };
        // A slot as the pool would hold it, claimed by "a pool thread" that finishes later.
        let slot = Arc::new(Slot { state: AtomicU8::new(QUEUED), result: OnceLock::new(), done: Default::default() });
        u.slots.lock().unwrap().insert(k.wrapped.clone(), slot.clone());
        assert!(slot.claim());
        let worker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            slot.finish(Some(b"from the pool".to_vec()));
        });
        assert_eq!(u.take(&k.wrapped).as_deref(), Some(&b"from the pool"[..]));
        worker.join().unwrap();
        assert_eq!((n(&u.counts.on_demand), n(&u.counts.in_call)), (0, 0));
    }
}
