//! Secret keys: 32 bytes with redacted `Debug`, wiped on drop, compared in
//! constant time. The node's master key and every key derived from it
//! (pseudonym masks, the consent index, DP seeds) are this type.

use std::fmt;
use std::hash::{Hash, Hasher};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

/// A 32-byte secret key with redacted `Debug` that is wiped on drop and
/// compares in constant time.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl PartialEq for SecretKey {
    fn eq(&self, o: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &o.0[..]).into()
    }
}
impl Eq for SecretKey {}

impl Hash for SecretKey {
    /// Hashes a digest of the key, never the key's bytes (a mask's hash
    /// only tells DataFusion's function registry two masks apart).
    fn hash<H: Hasher>(&self, state: &mut H) {
        use sha2::Digest;
        Sha256::digest(self.0).hash(state);
    }
}

impl SecretKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        SecretKey(b)
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
    /// HMAC-SHA256(self, label) as a new key: domain-separated derivation.
    pub fn derive(&self, label: &[u8]) -> SecretKey {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        mac.update(label);
        SecretKey(mac.finalize().into_bytes().into())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}
