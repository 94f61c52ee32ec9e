//! Decryption of Graph's rich-notification `encryptedContent`, exactly as Graph documents it
//! (<https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data#decrypting-resource-data-from-change-notifications>): the host unwraps the RSA-OAEP-SHA1 `dataKey`; then HMAC-SHA256 over
//! the base64-decoded `data` must equal `dataSignature` (checked in constant time) before
//! anything is decrypted; then AES-CBC with PKCS7 padding and IV = the first 16 key bytes.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why `encryptedContent` could not be decrypted. Each case is counted separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptError {
    /// A field is missing or not base64.
    Malformed(&'static str),
    /// The HMAC does not match: tampered, or the wrong key.
    Signature,
    /// The key length is not an AES key length, or the padding is wrong.
    Cipher,
}

/// The fields of `encryptedContent`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedContent {
    /// Base64 AES-CBC ciphertext.
    pub data: String,
    /// Base64 HMAC-SHA256 of the ciphertext.
    pub data_signature: String,
    /// Base64 RSA-OAEP-wrapped symmetric key.
    pub data_key: String,
    /// Which certificate wrapped the key.
    pub encryption_certificate_id: String,
    /// Thumbprint of that certificate (informational).
    #[serde(default)]
    pub encryption_certificate_thumbprint: Option<String>,
}

/// Base64-decodes the wrapped key.
pub fn wrapped_key(content: &EncryptedContent) -> Result<Vec<u8>, DecryptError> {
    b64(&content.data_key).ok_or(DecryptError::Malformed("dataKey"))
}

/// Verifies and decrypts `data` with the unwrapped symmetric `key`.
pub fn decrypt(content: &EncryptedContent, key: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let data = b64(&content.data).ok_or(DecryptError::Malformed("data"))?;
    let signature = b64(&content.data_signature).ok_or(DecryptError::Malformed("dataSignature"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| DecryptError::Cipher)?;
    mac.update(&data);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature).map_err(|_| DecryptError::Signature)?;
    if key.len() < 16 {
        return Err(DecryptError::Cipher);
    }
    let iv = &key[..16];
    let mut buf = data;
    let plain_len = match key.len() {
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| DecryptError::Cipher)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| DecryptError::Cipher)?
            .len(),
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| DecryptError::Cipher)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| DecryptError::Cipher)?
            .len(),
        _ => return Err(DecryptError::Cipher),
    };
    buf.truncate(plain_len);
    Ok(buf)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

/// Encrypts like Graph does (the emulator's and the tests' side): returns `(data, dataSignature)`
/// in base64 for plaintext under `key` (32 bytes).
pub fn encrypt_like_graph(key: &[u8; 32], plaintext: &[u8]) -> (String, String) {
    use aes::cipher::BlockEncryptMut;
    let data = cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &key[..16])
        .expect("32-byte key and 16-byte iv")
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(&data);
    let sig = mac.finalize().into_bytes();
    let e = base64::engine::general_purpose::STANDARD;
    (e.encode(&data), e.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(data: String, sig: String) -> EncryptedContent {
        EncryptedContent {
            data,
            data_signature: sig,
            data_key: String::new(),
            encryption_certificate_id: "c".into(),
            encryption_certificate_thumbprint: None,
        }
    }

    #[test]
    fn round_trip() {
        let key = [7u8; 32];
        let (d, s) = encrypt_like_graph(&key, br#"{"availability":"Busy"}"#);
        let plain = decrypt(&content(d, s), &key).unwrap();
        assert_eq!(plain, br#"{"availability":"Busy"}"#);
    }

    #[test]
    fn tampered_data_fails_signature_before_decrypting() {
        let key = [7u8; 32];
        let (d, s) = encrypt_like_graph(&key, b"hello world, a long enough text");
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&d).unwrap();
        raw[0] ^= 1;
        let d2 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decrypt(&content(d2, s), &key), Err(DecryptError::Signature));
    }

    #[test]
    fn wrong_key_fails_signature() {
        let (d, s) = encrypt_like_graph(&[7u8; 32], b"x");
        assert_eq!(decrypt(&content(d, s), &[8u8; 32]), Err(DecryptError::Signature));
    }

    #[test]
    fn bad_base64_is_malformed() {
        assert_eq!(decrypt(&content("!!".into(), "AA==".into()), &[1u8; 32]), Err(DecryptError::Malformed("data")));
    }
}
