//! Random tokens and keyed signatures (HMAC-SHA256) for cookies, CSRF tokens and image URLs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// `bytes` random bytes from the OS-seeded CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Hex SHA-256, for storing session tokens (a leaked table does not leak sessions).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time comparison of a MAC against an expected one.
pub fn verify_hmac_sha256(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(tag).is_ok()
}

/// The server's signing key with domain-separated helpers.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(key: Vec<u8>) -> Self {
        Signer { key }
    }

    /// A base64url signature of `value` for `purpose` (purposes cannot be swapped).
    pub fn sign(&self, purpose: &str, value: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, &[purpose.as_bytes(), b"\0", value.as_bytes()]))
    }

    pub fn verify(&self, purpose: &str, value: &str, signature: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(signature) {
            Ok(tag) => verify_hmac_sha256(&self.key, &[purpose.as_bytes(), b"\0", value.as_bytes()], &tag),
            Err(_) => false,
        }
    }

    /// `value.signature`, for cookies.
    pub fn seal(&self, purpose: &str, value: &str) -> String {
        format!("{value}.{}", self.sign(purpose, value))
    }

    /// The value of a sealed string if its signature holds.
    pub fn unseal<'a>(&self, purpose: &str, sealed: &'a str) -> Option<&'a str> {
        let (value, sig) = sealed.rsplit_once('.')?;
        self.verify(purpose, value, sig).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_resist_tampering_and_purpose_swaps() {
        let s = Signer::new(b"k".to_vec());
        let sealed = s.seal("anon", "abc");
        assert_eq!(s.unseal("anon", &sealed), Some("abc"));
        assert_eq!(s.unseal("csrf", &sealed), None);
        assert_eq!(s.unseal("anon", &sealed.replace("abc", "abd")), None);
        assert_eq!(Signer::new(b"other".to_vec()).unseal("anon", &sealed), None);
        assert_eq!(s.unseal("anon", "no-dot"), None);
    }

    #[test]
    fn random_tokens_have_the_requested_entropy() {
        let a = random_token(16);
        assert_eq!(a.len(), 22);
        assert_ne!(a, random_token(16));
    }
}
