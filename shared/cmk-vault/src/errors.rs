//! What a transit failure means for the key, in the reasons every provider uses. Vault answers
//! most failures with 400 and a message, so the message decides where the status does not.

use cmk_core::error::{KeyError, KeyErrorKind};

use crate::client::VaultError;

/// The kind of a failed call or of one failed batch item (`status` `None` for an item).
pub fn kind(status: Option<u16>, message: &str) -> KeyErrorKind {
    let m = message.to_ascii_lowercase();
    match status {
        // The key's address is one the service does not call: the key's setting.
        None if m.contains(crate::client::REFUSED_ADDRESS) => KeyErrorKind::InvalidKeyState,
        // No answer: unreachable, timed out, or an answer that is not transit's.
        None if m.contains("cannot be reached")
            || m.contains("did not answer")
            || m.contains("cut off") =>
        {
            KeyErrorKind::Transient
        }
        Some(403) => KeyErrorKind::AccessDenied,
        Some(429) => KeyErrorKind::Throttled,
        // Sealed, standby, or failing: retry later.
        Some(500..=599) => KeyErrorKind::Transient,
        Some(404) => KeyErrorKind::KeyNotFound,
        _ if m.contains("permission denied") || m.contains("invalid role or secret id") => {
            KeyErrorKind::AccessDenied
        }
        _ if m.contains("key not found") || m.contains("namespace not found") => {
            KeyErrorKind::KeyNotFound
        }
        _ if m.contains("not supported for key type") || m.contains("does not support") => {
            KeyErrorKind::KeyDisabled
        }
        // `min_decryption_version` refuses this data key's older version.
        _ if m.contains("disallowed by policy") => KeyErrorKind::InvalidKeyState,
        _ if m.contains("message authentication failed")
            || m.contains("invalid ciphertext")
            || m.contains("could not decode")
            || m.contains("invalid key version") =>
        {
            KeyErrorKind::InvalidCiphertext
        }
        _ if m.contains("context") && m.contains("deriv") => KeyErrorKind::InvalidKeyState,
        Some(_) => KeyErrorKind::InvalidKeyState,
        None => KeyErrorKind::Transient,
    }
}

/// A failed call on `key`, for an admin to read.
pub fn key_error(key: &str, e: &VaultError) -> KeyError {
    KeyError::new(
        kind(e.status, &e.message),
        format!("transit key {key}: {e}"),
    )
}

/// One failed item of a batch.
pub fn item_error(key: &str, message: &str) -> KeyError {
    KeyError::new(
        kind(Some(400), message),
        format!("transit key {key}: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_reasons_of_every_provider() {
        use KeyErrorKind::*;
        let cases = [
            (Some(403), "permission denied", AccessDenied),
            (Some(400), "invalid role or secret ID", AccessDenied),
            (Some(400), "encryption key not found", KeyNotFound),
            (Some(404), "namespace not found", KeyNotFound),
            (Some(429), "request rate limit exceeded", Throttled),
            (Some(503), "Vault is sealed", Transient),
            (None, "the server cannot be reached", Transient),
            (
                Some(400),
                "message encryption not supported for key type ed25519",
                KeyDisabled,
            ),
            (
                Some(400),
                "cipher: message authentication failed",
                InvalidCiphertext,
            ),
            (
                Some(400),
                "ciphertext or signature version is disallowed by policy (too old)",
                InvalidKeyState,
            ),
            (
                Some(400),
                "missing 'context' for key derivation",
                InvalidKeyState,
            ),
        ];
        for (status, message, want) in cases {
            assert_eq!(kind(status, message), want, "{status:?} {message}");
        }
    }
}
