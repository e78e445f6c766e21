//! HMAC-SHA256 checks shared by every signing provider. Comparisons are constant-time
//! (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of the concatenated `parts`, keyed with `secret`.
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Lower-case hex HMAC-SHA256, as providers put it in headers.
pub fn hmac_sha256_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac_sha256(secret, parts))
}

/// True when `hex_signature` is the HMAC-SHA256 of `parts` under `secret`, compared in
/// constant time. Invalid hex is simply a mismatch.
pub fn verify_hex(secret: &[u8], parts: &[&[u8]], hex_signature: &str) -> bool {
    let Ok(expected) = hex::decode(hex_signature.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_right_signature_only() {
        let sig = hmac_sha256_hex(b"k", &[b"body"]);
        assert!(verify_hex(b"k", &[b"body"], &sig));
        assert!(
            verify_hex(b"k", &[b"bo", b"dy"], &sig),
            "parts are concatenated"
        );
        assert!(!verify_hex(b"other", &[b"body"], &sig));
        assert!(!verify_hex(b"k", &[b"body!"], &sig));
        assert!(!verify_hex(b"k", &[b"body"], "zz"));
        assert!(!verify_hex(b"k", &[b"body"], &sig[..10]));
    }
}
