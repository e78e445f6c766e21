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

/// Lower-case hex SHA-256 of a body (the signed-body replay key).
pub fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(body))
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

/// Constant-time equality of two secrets of any length (compares their HMACs under a
/// fixed key, so neither length nor content leaks through timing).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let key = b"incidentpost-compare";
    let expected = hmac_sha256(key, &[b.as_bytes()]);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(a.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// Checks a shared-secret header (Datadog, EventBridge API destinations).
pub fn verify_token(
    expected: &str,
    presented: Option<&str>,
    header: &'static str,
) -> Result<(), crate::sources::VerifyError> {
    let presented = presented.ok_or(crate::sources::VerifyError::Missing(header))?;
    if constant_time_eq(presented.trim(), expected) {
        Ok(())
    } else {
        Err(crate::sources::VerifyError::Mismatch)
    }
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
