//! Sealing values at rest: AES-256-GCM under the host's key-encryption key (KEK), bound to
//! where the value lives (its row), so a sealed value copied to another row does not open.
//!
//! A sealed value is `MAGIC || nonce (12) || ciphertext || tag (16)`. A value without the
//! magic was written in clear by an older host: it opens as is, and is sealed when next
//! written (see the store).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;

const MAGIC: &[u8; 4] = b"TPS\x01";

/// The key-encryption key. Never printed.
#[derive(Clone)]
pub struct Kek {
    key: std::sync::Arc<LessSafeKey>,
    mac: hmac::Key,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// A value that does not open: a wrong KEK, or a damaged or moved value.
#[derive(Debug, thiserror::Error)]
#[error(
    "a sealed value of {0} does not open: the key-encryption key is not the one it was sealed with, or the value was damaged"
)]
pub struct OpenError(pub String);

impl Kek {
    /// From the base64 of 32 bytes (`openssl rand -base64 32`).
    pub fn from_base64(text: &str) -> Result<Kek, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "is not base64: make one with `openssl rand -base64 32`".to_string())?;
        Kek::from_bytes(&bytes)
    }

    /// From 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, String> {
        if bytes.len() != 32 {
            return Err(format!("holds {} bytes, not 32: make one with `openssl rand -base64 32`", bytes.len()));
        }
        // Two keys from one: one seals, one derives tokens.
        let root = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let seal = hmac::sign(&root, b"teams-presence-sync seal v1");
        let mac = hmac::sign(&root, b"teams-presence-sync tokens v1");
        let key = UnboundKey::new(&AES_256_GCM, seal.as_ref()).map_err(|_| "is not an AES-256 key".to_string())?;
        Ok(Kek {
            key: std::sync::Arc::new(LessSafeKey::new(key)),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
        })
    }

    /// A fresh random KEK (tests, the demo).
    pub fn random() -> Kek {
        let mut b = [0u8; 32];
        aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
        Kek::from_bytes(&b).expect("32 bytes")
    }

    /// The base64 form [`Kek::from_base64`] reads, of a KEK made from `bytes` (tests, the
    /// demo, writing a `kek_file`).
    pub fn encode(bytes: &[u8; 32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A token derived from the KEK for `label`: 128 bits, base64url (URL-safe).
    pub fn derive_token(&self, label: &str) -> String {
        let tag = hmac::sign(&self.mac, label.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
    }

    /// Seals `plain`, bound to `place` (e.g. `state/contoso/subscriptions`).
    pub fn seal(&self, place: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(place.as_bytes()), &mut body)
            .expect("AES-GCM seals any length we store");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a value sealed at `place`; a value without the magic was stored in clear and is
    /// returned as is.
    pub fn open(&self, place: &str, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Some(rest) = stored.strip_prefix(MAGIC.as_slice()) else { return Ok(stored.to_vec()) };
        if rest.len() < NONCE_LEN + 16 {
            return Err(OpenError(place.into()));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError(place.into()))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut body)
            .map_err(|_| OpenError(place.into()))?;
        Ok(plain.to_vec())
    }

    /// Whether `stored` is sealed (not a clear value from an older host).
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_a_wrong_key_or_place() {
        let k = Kek::random();
        let sealed = k.seal("state/a/x", b"client-state-secret");
        assert!(Kek::is_sealed(&sealed));
        assert!(!sealed.windows(6).any(|w| w == b"client"), "the value shows through");
        assert_eq!(k.open("state/a/x", &sealed).unwrap(), b"client-state-secret");
        assert!(k.open("state/b/x", &sealed).is_err(), "a value moved to another row opened");
        assert!(Kek::random().open("state/a/x", &sealed).is_err(), "another KEK opened it");
        assert_eq!(k.open("state/a/x", b"{\"clear\":1}").unwrap(), b"{\"clear\":1}");
        assert!(Kek::from_base64("c2hvcnQ=").unwrap_err().contains("not 32"));
        assert!(format!("{k:?}").contains("redacted"));
    }
}
