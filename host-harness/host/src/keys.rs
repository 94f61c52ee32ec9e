//! Per-integration RSA-2048 key and self-signed certificate for Graph's encrypted rich
//! notifications. The private key stays in the host: the plugin only gets the certificate
//! and asks the host to unwrap each notification's key (RSA-OAEP with SHA-1, as Microsoft
//! documents for rich notifications:
//! <https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data>).
//! Private keys are never logged.

use anyhow::Context;
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine as _;

use crate::seal::Kek;
use crate::store::{StateStore, StoredKey};

/// An integration's notification key.
pub struct NotificationKey {
    /// The id Graph echoes (`encryptionCertificateId`).
    pub cert_id: String,
    /// Base64 DER of the certificate (what `encryptionCertificate` takes).
    pub cert_base64: String,
    key: OaepPrivateDecryptingKey,
}

impl std::fmt::Debug for NotificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationKey").field("cert_id", &self.cert_id).finish_non_exhaustive()
    }
}

impl NotificationKey {
    /// Loads the integration's key from `store`, generating and storing one on first use.
    /// The private key is stored sealed under `kek`; one an older host stored in clear is
    /// sealed now.
    pub fn load_or_create(store: &dyn StateStore, integration: &str, kek: &Kek) -> anyhow::Result<NotificationKey> {
        let place = format!("key/{integration}");
        let stored = match store.key(integration)? {
            Some(mut k) => {
                let clear = !Kek::is_sealed(&k.pkcs8);
                k.pkcs8 = kek.open(&place, &k.pkcs8).with_context(|| format!("integration {integration}"))?;
                if clear {
                    store.put_key(integration, &StoredKey { pkcs8: kek.seal(&place, &k.pkcs8), ..k.clone() })?;
                    tracing::info!(
                        integration,
                        "the notification key, stored in clear by an older host, is sealed now"
                    );
                }
                k
            }
            None => {
                let k = generate(integration)?;
                store.put_key(integration, &StoredKey { pkcs8: kek.seal(&place, &k.pkcs8), ..k.clone() })?;
                k
            }
        };
        let key = PrivateDecryptingKey::from_pkcs8(&stored.pkcs8)
            .map_err(|e| anyhow::anyhow!("stored key of {integration} is unusable: {e}"))?;
        Ok(NotificationKey {
            cert_id: stored.cert_id,
            cert_base64: base64::engine::general_purpose::STANDARD.encode(&stored.cert_der),
            key: OaepPrivateDecryptingKey::new(key)
                .map_err(|_| anyhow::anyhow!("key of {integration} is not RSA-OAEP capable"))?,
        })
    }

    /// RSA-OAEP-SHA1 decrypts a wrapped symmetric key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; self.key.min_output_size()];
        let n = self.key.decrypt(&OAEP_SHA1_MGF1SHA1, wrapped, &mut out, None).ok()?.len();
        out.truncate(n);
        Some(out)
    }
}

fn generate(integration: &str) -> anyhow::Result<StoredKey> {
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .context("generating RSA-2048 key")?;
    let mut params = rcgen::CertificateParams::new(vec![format!("{integration}.teams-presence-sync.invalid")])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("teams-presence-sync {integration}"));
    let cert = params.self_signed(&kp).context("self-signing certificate")?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok(StoredKey {
        cert_id: format!("tps-{integration}-{created}"),
        pkcs8: kp.serialize_der(),
        cert_der: cert.der().to_vec(),
    })
}

#[cfg(test)]
impl NotificationKey {
    /// A fresh key of certificate id `cert_id` (no certificate), and its public half.
    pub(crate) fn for_tests(cert_id: &str) -> (NotificationKey, aws_lc_rs::rsa::OaepPublicEncryptingKey) {
        let private = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let public = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(private.public_key()).expect("OAEP public key");
        let key = NotificationKey {
            cert_id: cert_id.to_string(),
            cert_base64: String::new(),
            key: OaepPrivateDecryptingKey::new(private).expect("OAEP key"),
        };
        (key, public)
    }
}
