//! The state-store seam: everything the host keeps durably for an integration. The plugin's
//! key-value state (`state` interface), the durable webhook inbox (notifications acknowledged
//! to Graph but not yet processed), the notification key and the release a hot swap chose.
//!
//! [`SqliteStore`] is the default (embedded, WAL). A platform plugs in its own by implementing
//! [`StateStore`]. Calls are synchronous: they run inside a guest call or a webhook handler and
//! must be short.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::error::StoreError;

/// Per-integration quota of key-value bytes.
pub const KV_QUOTA_BYTES: u64 = 256 << 20;

/// A stored key: PKCS#8 private key and DER certificate.
pub struct StoredKey {
    /// Certificate id (echoed by Graph).
    pub cert_id: String,
    /// PKCS#8 DER of the RSA private key.
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
}

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
    /// Removes a processed inbox entry.
    fn inbox_delete(&self, id: i64) -> Result<(), StoreError>;
    /// How many inbox entries of the integration wait.
    fn inbox_len(&self, integration: &str) -> Result<u64, StoreError>;
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
}
