//! Signed messages (`[signing]`, docs/security.md): with a cluster key, every replication message carries an
//! HMAC-SHA256 of its message id and payload in the `HarmonyLite-Signature` header, and a receiver applies only
//! messages signed with a key it holds. Pure: no I/O.
//!
//! Why the message id is signed too: it names the publisher (node and instance), which decides whether a
//! receiver takes the message for its own and skips it. Signing the payload alone would let anyone on the
//! network replay a node's message under another id.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries a message's signature.
pub const SIGNATURE_HEADER: &str = "HarmonyLite-Signature";
/// The signature scheme, the value's prefix: a later scheme gets another prefix, and receivers tell them apart.
const SCHEME: &str = "hmac-sha256=";

type HmacSha256 = Hmac<Sha256>;

/// Why a message was refused. The text goes into the dead-letter record and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned message refused: this node requires messages signed with the cluster key (signing.key)")]
    Missing,
    #[error("message signature does not match any cluster key this node holds (signing.key, signing.previous_keys)")]
    Mismatch,
    #[error("malformed message signature header `{SIGNATURE_HEADER}`")]
    Malformed,
}

/// The keys of one node: the one it signs with and every one it accepts.
#[derive(Clone)]
pub struct ClusterKeys {
    signing: Vec<u8>,
    /// `signing` first, then the previous keys still accepted during a rotation.
    accepted: Vec<Vec<u8>>,
    accept_unsigned: bool,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("accepted", &self.accepted.len())
            .field("accept_unsigned", &self.accept_unsigned)
            .finish_non_exhaustive()
    }
}

impl ClusterKeys {
    pub fn new(signing: &[u8], previous: &[&[u8]], accept_unsigned: bool) -> ClusterKeys {
        let mut accepted = vec![signing.to_vec()];
        accepted.extend(previous.iter().map(|key| key.to_vec()));
        ClusterKeys {
            signing: signing.to_vec(),
            accepted,
            accept_unsigned,
        }
    }

    fn mac(key: &[u8], message_id: &str, payload: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length; the error case cannot happen for HMAC.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        // The id's length first: no (id, payload) pair can be cut differently into the same bytes.
        mac.update(&(message_id.len() as u64).to_be_bytes());
        mac.update(message_id.as_bytes());
        mac.update(payload);
        mac
    }

    /// The header value for a message with this id and payload.
    pub fn sign(&self, message_id: &str, payload: &[u8]) -> String {
        let tag = Self::mac(&self.signing, message_id, payload)
            .finalize()
            .into_bytes();
        let mut out = String::with_capacity(SCHEME.len() + tag.len() * 2);
        out.push_str(SCHEME);
        for byte in tag {
            // Writing into a String cannot fail.
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// Whether a received message may be applied: signed with an accepted key, or unsigned while
    /// `signing.accept_unsigned` is on (a cluster rolling signing out). A wrong signature is refused even then.
    pub fn verify(
        &self,
        message_id: &str,
        payload: &[u8],
        header: Option<&str>,
    ) -> Result<(), SignatureError> {
        let Some(header) = header else {
            return if self.accept_unsigned {
                Ok(())
            } else {
                Err(SignatureError::Missing)
            };
        };
        let tag = header
            .strip_prefix(SCHEME)
            .and_then(decode_hex)
            .ok_or(SignatureError::Malformed)?;
        // `verify_slice` compares in constant time.
        if self.accepted.iter().any(|key| {
            Self::mac(key, message_id, payload)
                .verify_slice(&tag)
                .is_ok()
        }) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_verifies_and_any_change_breaks_it() {
        let keys = ClusterKeys::new(b"a cluster key of some length", &[], false);
        let header = keys.sign("1-2-3-ab", b"payload");
        assert!(header.starts_with("hmac-sha256="));
        assert_eq!(keys.verify("1-2-3-ab", b"payload", Some(&header)), Ok(()));
        assert_eq!(
            keys.verify("1-2-3-ab", b"payloaD", Some(&header)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify("9-2-3-ab", b"payload", Some(&header)),
            Err(SignatureError::Mismatch),
            "the message id is signed"
        );
        // The id's length is signed: moving bytes between the id and the payload changes the signature.
        assert_eq!(
            keys.verify("1-2-3-a", b"bpayload", Some(&header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn other_keys_unsigned_and_malformed_headers_are_refused() {
        let keys = ClusterKeys::new(b"the key of this cluster", &[], false);
        let other = ClusterKeys::new(b"the key of another cluster", &[], false);
        let foreign = other.sign("id", b"p");
        assert_eq!(
            keys.verify("id", b"p", Some(&foreign)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(keys.verify("id", b"p", None), Err(SignatureError::Missing));
        for bad in [
            "",
            "hmac-sha256=zz",
            "sha1=00",
            &foreign[..foreign.len() - 1],
        ] {
            assert_eq!(
                keys.verify("id", b"p", Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn previous_keys_verify_during_a_rotation_and_unsigned_only_when_allowed() {
        let old = ClusterKeys::new(b"the old key of this cluster", &[], false);
        let rotated = ClusterKeys::new(
            b"the new key of this cluster",
            &[b"the old key of this cluster"],
            true,
        );
        let header = old.sign("id", b"p");
        assert_eq!(rotated.verify("id", b"p", Some(&header)), Ok(()));
        assert_eq!(rotated.verify("id", b"p", None), Ok(()));
        let new_header = rotated.sign("id", b"p");
        assert_eq!(
            old.verify("id", b"p", Some(&new_header)),
            Err(SignatureError::Mismatch),
            "a node that lacks the new key refuses its signatures"
        );
    }
}
