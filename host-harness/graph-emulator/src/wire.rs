//! What the emulator writes on the wire the way Microsoft writes it, written from Microsoft's
//! documentation, not from the plugin's code (a bug the two shared could not be caught):
//! date-times, and the encryption of rich notifications.

use aws_lc_rs::cipher::{AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use base64::Engine as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The app id Graph's change-tracking service signs validation tokens as (`appid`/`azp`):
/// "Microsoft Graph Change Tracking",
/// <https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data#validation-tokens-in-the-change-notification>.
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// A date-time as Graph writes it: UTC, seven fraction digits, `Z`
/// (`2016-11-20T18:23:45.9356913Z`, the `expirationDateTime` of
/// <https://learn.microsoft.com/en-us/graph/api/resources/subscription>).
pub fn graph_time(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

/// Parses a date-time a client sent (ISO 8601 / RFC 3339, any fraction, any offset) into ms
/// since the epoch.
pub fn parse_time(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Encrypts a rich notification's resource data as Graph does
/// (<https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data#decrypting-resource-data-from-change-notifications>):
/// AES-256 in CBC mode with PKCS7 padding, the IV being the first 16 bytes of the symmetric
/// key; `dataSignature` is the HMAC-SHA256 of the encrypted bytes under the same key. Returns
/// `(data, dataSignature)`, both base64.
pub fn encrypt_resource_data(key: &[u8; 32], plaintext: &[u8]) -> (String, String) {
    let cipher = PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, key).expect("a 32-byte AES key"))
        .expect("AES-256-CBC");
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let mut data = plaintext.to_vec();
    cipher.less_safe_encrypt(&mut data, EncryptionContext::Iv128(FixedLength::from(iv))).expect("AES-CBC encrypts");
    let mac = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key), &data);
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(&data), b64.encode(mac.as_ref()))
}

/// A GUID in its 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether a URL points to loopback (the emulator's one deliberate difference: a loopback
/// `notificationUrl` may be plain http).
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_graph_writes_them_and_read_back() {
        assert_eq!(graph_time(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(graph_time(1_479_666_225_935), "2016-11-20T18:23:45.9350000Z");
        assert_eq!(parse_time("2016-11-20T18:23:45.9356913Z"), Some(1_479_666_225_935));
        assert_eq!(parse_time("2016-11-20T19:23:45+01:00"), Some(1_479_666_225_000));
        assert_eq!(parse_time(&graph_time(1_700_000_000_123)), Some(1_700_000_000_123));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn resource_data_is_aes_cbc_with_the_key_s_first_16_bytes_as_iv_and_an_hmac() {
        // Checked against the RustCrypto implementation of the same documented scheme.
        use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
        use hmac::Mac;
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let (data, sig) = encrypt_resource_data(&key, b"{\"availability\":\"Busy\"}");
        let b64 = base64::engine::general_purpose::STANDARD;
        let data = b64.decode(data).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(&data);
        mac.verify_slice(&b64.decode(sig).unwrap()).unwrap();
        let plain = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
            .unwrap()
            .decrypt_padded_vec_mut::<Pkcs7>(&data)
            .unwrap();
        assert_eq!(plain, b"{\"availability\":\"Busy\"}");
    }

    #[test]
    fn guids_and_loopback() {
        assert!(is_guid("5db68c59-bbeb-41d7-a5df-b316a4434048"));
        assert!(!is_guid("5db68c59-bbeb"));
        assert!(is_loopback(&url::Url::parse("http://127.0.0.1:9/").unwrap()));
        assert!(!is_loopback(&url::Url::parse("http://example.com/").unwrap()));
    }
}
