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
//! - before the actor offers a row to the plugin it makes sure the row's keys are done
//!   ([`Unwraps::ready`]): a key still queued is unwrapped right there (so an integration never
//!   waits behind another's queue), one a pool thread is unwrapping is awaited outside the
//!   guest call;
//! - inside the guest call, `crypto.unwrap-key` finds the key done ([`Unwraps::take`]); one the
//!   host did not see (or could not read) is unwrapped on demand, as it always was.
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

/// Slots (keys queued, being unwrapped or done and not yet taken) one integration may hold
/// from the webhook; beyond it a key is unwrapped when its row is read (about 300 bytes a slot).
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
    struct Envelope {
        value: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(rename = "encryptedContent", default)]
        encrypted: Option<serde_json::Value>,
    }
    let env: Envelope = serde_json::from_slice(body)?;
    Ok(env
        .value
        .into_iter()
        .filter_map(|item| {
            let enc = item.encrypted?;
            let certificate_id = enc.get("encryptionCertificateId")?.as_str()?.to_string();
            let wrapped = base64::engine::general_purpose::STANDARD.decode(enc.get("dataKey")?.as_str()?).ok()?;
            Some(DataKey { certificate_id, wrapped })
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
    /// Still queued when the row's turn came: done by the actor before the guest call.
    pub before_call: AtomicU64,
    /// Not seen by the host: done inside the guest call.
    pub on_demand: AtomicU64,
    /// CPU time of all unwraps, wherever they ran (µs).
    pub cpu_us: AtomicU64,
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
    /// queued, are skipped). `bounded`: only while the integration holds fewer than
    /// [`MAX_SLOTS`] (the webhook's case; the actor's reads are bounded by their step).
    pub fn start(&self, keys: &[DataKey], bounded: bool) {
        let mut slots = self.slots.lock().unwrap();
        for k in keys {
            if k.certificate_id != self.key.cert_id || slots.contains_key(&k.wrapped) {
                continue;
            }
            if bounded && slots.len() >= MAX_SLOTS {
                return;
            }
            let slot =
                Arc::new(Slot { state: AtomicU8::new(QUEUED), result: OnceLock::new(), done: Default::default() });
            slots.insert(k.wrapped.clone(), slot.clone());
            let (key, counts, wrapped) = (self.key.clone(), self.counts.clone(), k.wrapped.clone());
            pool().spawn(move || {
                if slot.claim() {
                    let r = timed(&counts, || key.unwrap(&wrapped));
                    counts.parallel.fetch_add(1, Ordering::Relaxed);
                    slot.finish(r);
                }
            });
        }
    }

    /// Makes sure the unwraps of `keys` are done: one still queued is done here, at once; one a
    /// pool thread is doing is awaited.
    pub async fn ready(&self, keys: &[DataKey]) {
        for k in keys {
            let Some(slot) = self.slots.lock().unwrap().get(&k.wrapped).cloned() else {
                continue;
            };
            if slot.claim() {
                let r = timed(&self.counts, || self.key.unwrap(&k.wrapped));
                self.counts.before_call.fetch_add(1, Ordering::Relaxed);
                slot.finish(r);
            } else {
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
                self.counts.before_call.fetch_add(1, Ordering::Relaxed);
                let r = timed(&self.counts, || self.key.unwrap(wrapped));
                slot.finish(r.clone());
                return r;
            }
        }
        self.counts.on_demand.fetch_add(1, Ordering::Relaxed);
        timed(&self.counts, || self.key.unwrap(wrapped))
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

fn timed<T>(counts: &UnwrapCounts, f: impl FnOnce() -> T) -> T {
    let t0 = thread_cpu();
    let r = f();
    counts.cpu_us.fetch_add(thread_cpu().saturating_sub(t0).as_micros() as u64, Ordering::Relaxed);
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
        u.start(&keys, true);
        assert_eq!(u.held(), 8);
        // Another certificate's key is not this integration's to unwrap.
        u.start(&[DataKey { certificate_id: "other".into(), wrapped: wrap(&public, b"x") }], true);
        assert_eq!(u.held(), 8);
        u.ready(&keys).await;
        for (k, s) in keys.iter().zip(&secrets) {
            assert_eq!(u.take(&k.wrapped).as_deref(), Some(&s[..]));
        }
        assert_eq!(u.held(), 0, "a taken key leaves its slot");
        let c = &u.counts;
        assert_eq!(n(&c.parallel) + n(&c.before_call), 8);
        assert_eq!(n(&c.on_demand), 0);
        assert!(n(&c.cpu_us) > 0);
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
        u.start(&keys, true);
        u.ready(&keys).await;
        assert_eq!(u.take(&bad), None);
        assert_eq!(u.take(&bad), None);
        assert_eq!(n(&u.counts.on_demand), 1);
    }

    #[tokio::test]
    async fn the_webhook_holds_a_bounded_number_of_slots_and_forget_frees_them() {
        let (key, _) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        // Forged keys: they cost CPU (each fails), never more than MAX_SLOTS slots.
        let keys: Vec<DataKey> = (0..MAX_SLOTS + 10)
            .map(|i| DataKey { certificate_id: "cert".into(), wrapped: (i as u32).to_be_bytes().repeat(64) })
            .collect();
        u.start(&keys, true);
        assert_eq!(u.held(), MAX_SLOTS);
        // The actor's reads are bounded by their step, not by MAX_SLOTS.
        u.start(&keys[MAX_SLOTS..], false);
        assert_eq!(u.held(), MAX_SLOTS + 10);
        u.ready(&keys).await;
        u.forget(&keys);
        assert_eq!(u.held(), 0);
    }

    #[tokio::test]
    async fn a_key_still_queued_is_claimed_by_whoever_comes_first_and_unwrapped_once() {
        let (key, public) = NotificationKey::for_tests("cert");
        let u = Unwraps::new(Arc::new(key));
        // Fill the pool with slow work so the slot stays queued, then make it ready at once.
        let gate = Arc::new(std::sync::Barrier::new(pool().current_num_threads() + 1));
        for _ in 0..pool().current_num_threads() {
            let g = gate.clone();
            pool().spawn(move || {
                g.wait();
            });
        }
        let k = DataKey { certificate_id: "cert".into(), wrapped: wrap(&public, b"queued") };
        u.start(std::slice::from_ref(&k), true);
        u.ready(std::slice::from_ref(&k)).await;
        gate.wait();
        assert_eq!(n(&u.counts.before_call), 1, "the actor unwrapped the queued key itself");
        assert_eq!(u.take(&k.wrapped).as_deref(), Some(&b"queued"[..]));
        // The pool's job, when it runs, finds the key claimed and does nothing.
        let done = Arc::new(std::sync::Barrier::new(2));
        let d = done.clone();
        pool().spawn(move || {
            d.wait();
        });
        done.wait();
        assert_eq!(n(&u.counts.parallel), 0);
    }
}
