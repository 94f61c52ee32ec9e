//! Rich notifications' `validationTokens` (<https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data#validation-tokens-in-the-change-notification>): JWTs that Microsoft's login
//! service signs, one per app and tenant in a batch. A token is good when
//! 1. its signature verifies (RS256) with a key the login service publishes (the keys of
//!    `{login}/common/.well-known/openid-configuration` → `jwks_uri`; they rotate daily),
//! 2. it has not expired (and is already valid),
//! 3. `aud` is our app's client id, and
//! 4. the caller is Graph change tracking: `appid` (v1.0 token) or `azp` (v2.0 token) is
//!    [`GRAPH_CHANGE_TRACKING_APP_ID`], and
//! 5. it was issued for the integration's tenant: `tid` is the tenant's id and `iss` names it
//!    (`https://sts.windows.net/{tid}/` for v1.0 tokens, `https://login.microsoftonline.com/{tid}/v2.0`
//!    for v2.0). A multi-tenant app's token for another customer's tenant is refused.

use std::collections::HashMap;

use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};
use sha2::Sha256;

/// The app id of "Microsoft Graph Change Tracking", the caller of every notification.
pub const GRAPH_CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// Clock skew allowed on `exp` and `nbf`.
pub const SKEW_MS: u64 = 5 * 60 * 1000;

/// A signing key as a JWKS lists it (RSA only; others are skipped).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    /// Key id (the token header's `kid`).
    pub kid: String,
    /// Modulus, base64url.
    pub n: String,
    /// Exponent, base64url.
    pub e: String,
}

/// Why a token is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWS compact token, or bad base64/JSON.
    Malformed(String),
    /// `alg` is not RS256.
    Algorithm(String),
    /// No published key has this `kid` (keys may have rotated: fetch them again).
    UnknownKey(String),
    /// The signature does not verify.
    Signature,
    /// Expired, or not valid yet.
    Expired,
    /// `aud` is another app.
    Audience(String),
    /// The caller is not Graph change tracking.
    Caller(String),
    /// `tid` or `iss` names another tenant (or is missing).
    Tenant(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(w) => write!(f, "malformed token: {w}"),
            TokenError::Algorithm(a) => write!(f, "algorithm {a} is not RS256"),
            TokenError::UnknownKey(k) => write!(f, "no published signing key has kid {k}"),
            TokenError::Signature => f.write_str("signature does not verify"),
            TokenError::Expired => f.write_str("token expired or not yet valid"),
            TokenError::Audience(a) => write!(f, "audience {a} is not this app"),
            TokenError::Caller(c) => write!(f, "caller {c} is not Graph change tracking"),
            TokenError::Tenant(t) => write!(f, "issued for tenant {t}, not this integration's"),
        }
    }
}

/// Published signing keys by `kid`.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, RsaPublicKey>,
    /// The keys as published (persisted, and compared to detect rotation).
    pub jwks: Vec<Jwk>,
}

impl KeySet {
    /// Builds a key set; keys that do not parse are skipped.
    pub fn new(jwks: Vec<Jwk>) -> KeySet {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let keys = jwks
            .iter()
            .filter_map(|k| {
                let n = BigUint::from_bytes_be(&b64.decode(k.n.trim_end_matches('=')).ok()?);
                let e = BigUint::from_bytes_be(&b64.decode(k.e.trim_end_matches('=')).ok()?);
                Some((k.kid.clone(), RsaPublicKey::new(n, e).ok()?))
            })
            .collect();
        KeySet { keys, jwks }
    }

    /// Parses a JWKS document (`{"keys": [...]}`), keeping RSA signing keys.
    pub fn from_jwks_json(body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("JWKS: {e}"))?;
        let jwks: Vec<Jwk> = doc
            .keys
            .into_iter()
            .filter(|k| k.get("kty").and_then(|v| v.as_str()) == Some("RSA"))
            .filter(|k| k.get("use").and_then(|v| v.as_str()).is_none_or(|u| u == "sig"))
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .collect();
        let set = KeySet::new(jwks);
        if set.keys.is_empty() {
            return Err("JWKS: no RSA signing key".into());
        }
        Ok(set)
    }

    /// Whether any key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token` for app `client_id` of tenant `tenant` (its GUID; `None`: any tenant,
    /// whose id the caller then pins) at `now_ms`; returns its expiry (ms) and its tenant id
    /// (lowercase).
    pub fn verify(
        &self,
        token: &str,
        client_id: &str,
        tenant: Option<&str>,
        now_ms: u64,
    ) -> Result<(u64, String), TokenError> {
        #[derive(serde::Deserialize)]
        struct Header {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Claims {
            #[serde(default)]
            aud: Option<serde_json::Value>,
            #[serde(default)]
            exp: Option<u64>,
            #[serde(default)]
            nbf: Option<u64>,
            #[serde(default)]
            appid: Option<String>,
            #[serde(default)]
            azp: Option<String>,
            #[serde(default)]
            tid: Option<String>,
            #[serde(default)]
            iss: Option<String>,
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("not three dot-separated parts".into()));
        };
        let decode = |p: &str, what: &str| b64.decode(p).map_err(|e| TokenError::Malformed(format!("{what}: {e}")));
        let header: Header =
            serde_json::from_slice(&decode(h, "header")?).map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        if header.alg != "RS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.keys.get(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let sig = Signature::try_from(decode(s, "signature")?.as_slice()).map_err(|_| TokenError::Signature)?;
        let signed = &token[..h.len() + 1 + c.len()];
        VerifyingKey::<Sha256>::new(key.clone()).verify(signed.as_bytes(), &sig).map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(c, "claims")?).map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let exp_ms = claims.exp.ok_or(TokenError::Expired)?.saturating_mul(1000);
        if exp_ms + SKEW_MS <= now_ms || claims.nbf.is_some_and(|n| n.saturating_mul(1000) > now_ms + SKEW_MS) {
            return Err(TokenError::Expired);
        }
        let aud_ok = match &claims.aud {
            Some(serde_json::Value::String(a)) => a == client_id,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(client_id)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience(claims.aud.map(|a| a.to_string()).unwrap_or_default()));
        }
        let caller = claims.appid.or(claims.azp).unwrap_or_default();
        if caller != GRAPH_CHANGE_TRACKING_APP_ID {
            return Err(TokenError::Caller(caller));
        }
        let tid = claims.tid.unwrap_or_default().to_ascii_lowercase();
        if tid.is_empty() || tenant.is_some_and(|t| !t.eq_ignore_ascii_case(&tid)) {
            return Err(TokenError::Tenant(if tid.is_empty() { "(no tid)".into() } else { tid }));
        }
        // The issuer names the same tenant: `https://{authority}/{tid}/` or `.../{tid}/v2.0`.
        let iss = claims.iss.unwrap_or_default().to_ascii_lowercase();
        let names_tid = iss
            .strip_prefix("https://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, path)| path == format!("{tid}/") || path == format!("{tid}/v2.0"));
        if !names_tid {
            return Err(TokenError::Tenant(format!("{tid} (issuer {iss})")));
        }
        Ok((exp_ms, tid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;

    /// A fixed 1024-bit test key (fast to use; only tests sign with it).
    fn key() -> rsa::RsaPrivateKey {
        use rsa::pkcs8::DecodePrivateKey;
        rsa::RsaPrivateKey::from_pkcs8_pem(TEST_KEY).unwrap()
    }

    const TEST_KEY: &str = include_str!("../testdata/jwt-test-key.pem");

    fn jwk(kid: &str, k: &rsa::RsaPrivateKey) -> Jwk {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Jwk { kid: kid.into(), n: b64.encode(k.n().to_bytes_be()), e: b64.encode(k.e().to_bytes_be()) }
    }

    fn token(kid: &str, claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string());
        let c = b64.encode(claims.to_string());
        let input = format!("{h}.{c}");
        let sig = SigningKey::<Sha256>::new(key()).sign(input.as_bytes());
        format!("{input}.{}", b64.encode(sig.to_bytes()))
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"aud": "client", "exp": 2_000, "nbf": 1_000, "appid": GRAPH_CHANGE_TRACKING_APP_ID,
            "tid": TID, "iss": format!("https://sts.windows.net/{TID}/")})
    }

    const TID: &str = "5db68c59-bbeb-41d7-a5df-b316a4434048";

    #[test]
    fn a_token_of_another_tenant_is_refused() {
        let set = KeySet::new(vec![jwk("k1", &key())]);
        let now = 1_500_000;
        let other = "8c1d5e2a-3f4b-4c6d-9e8f-0a1b2c3d4e5f";
        assert_eq!(set.verify(&token("k1", good_claims()), "client", Some(TID), now), Ok((2_000_000, TID.into())));
        assert_eq!(
            set.verify(&token("k1", good_claims()), "client", Some(&TID.to_uppercase()), now).map(|v| v.0),
            Ok(2_000_000)
        );
        assert_eq!(
            set.verify(&token("k1", good_claims()), "client", Some(other), now),
            Err(TokenError::Tenant(TID.into()))
        );
        // The tid says ours but the issuer names another tenant.
        let mut c = good_claims();
        c["iss"] = format!("https://sts.windows.net/{other}/").into();
        assert!(matches!(set.verify(&token("k1", c), "client", Some(TID), now), Err(TokenError::Tenant(_))));
        // v2.0 issuer form.
        let mut c = good_claims();
        c["iss"] = format!("https://login.microsoftonline.com/{TID}/v2.0").into();
        assert!(set.verify(&token("k1", c), "client", Some(TID), now).is_ok());
        // No tid at all.
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("tid");
        assert!(matches!(set.verify(&token("k1", c), "client", None, now), Err(TokenError::Tenant(_))));
    }

    #[test]
    fn a_good_token_verifies_and_every_rule_is_enforced() {
        let set = KeySet::new(vec![jwk("k1", &key())]);
        let now = 1_500_000;
        assert_eq!(set.verify(&token("k1", good_claims()), "client", None, now), Ok((2_000_000, TID.into())));
        // v2.0 tokens name the caller in azp.
        let mut v2 = good_claims();
        v2.as_object_mut().unwrap().remove("appid");
        v2["azp"] = GRAPH_CHANGE_TRACKING_APP_ID.into();
        assert!(set.verify(&token("k1", v2), "client", None, now).is_ok());
        assert_eq!(
            set.verify(&token("k1", good_claims()), "other-app", None, now),
            Err(TokenError::Audience("\"client\"".into()))
        );
        assert_eq!(
            set.verify(&token("k1", good_claims()), "client", None, 2_000_000 + SKEW_MS),
            Err(TokenError::Expired)
        );
        let mut caller = good_claims();
        caller["appid"] = "someone-else".into();
        assert_eq!(
            set.verify(&token("k1", caller), "client", None, now),
            Err(TokenError::Caller("someone-else".into()))
        );
        assert_eq!(
            set.verify(&token("k2", good_claims()), "client", None, now),
            Err(TokenError::UnknownKey("k2".into()))
        );
        // Claims altered after signing.
        let t = token("k1", good_claims());
        let parts: Vec<&str> = t.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut forged = good_claims();
        forged["aud"] = "client".into();
        forged["exp"] = 9_999_999.into();
        let forged = format!("{}.{}.{}", parts[0], b64.encode(forged.to_string()), parts[2]);
        assert_eq!(set.verify(&forged, "client", None, now), Err(TokenError::Signature));
        // alg none / HS256 never pass.
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","kid":"k1"}"#), parts[1]);
        assert_eq!(set.verify(&none, "client", None, now), Err(TokenError::Algorithm("none".into())));
        assert!(matches!(set.verify("abc", "client", None, now), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn jwks_documents_keep_rsa_signing_keys_only() {
        let k = jwk("k1", &key());
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "k1", "n": k.n, "e": k.e, "x5c": ["..."]},
            {"kty": "EC", "use": "sig", "kid": "k2", "crv": "P-256", "x": "a", "y": "b"},
            {"kty": "RSA", "use": "enc", "kid": "k3", "n": k.n, "e": k.e},
        ]});
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.jwks.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), vec!["k1"]);
        assert!(KeySet::from_jwks_json(br#"{"keys": []}"#).is_err());
        assert!(KeySet::from_jwks_json(b"nope").is_err());
    }
}
