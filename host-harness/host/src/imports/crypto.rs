//! `crypto`: RSA-OAEP unwrap with the integration's key (which never enters the sandbox) and
//! secure random bytes.

use crate::bindings::crypto;
use crate::instance::HostState;
use crate::sandbox::MAX_RANDOM_BYTES;

impl crypto::Host for HostState {
    fn unwrap_key(&mut self, certificate_id: String, wrapped_key: Vec<u8>) -> Result<Vec<u8>, crypto::UnwrapError> {
        if certificate_id != self.ctx.key.cert_id {
            return Err(crypto::UnwrapError::UnknownCertificate(certificate_id));
        }
        self.ctx.unwraps.take(&wrapped_key).ok_or(crypto::UnwrapError::DecryptFailed)
    }
    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len.min(MAX_RANDOM_BYTES) as usize];
        aws_lc_rs::rand::fill(&mut v).expect("system randomness");
        v
    }
}
