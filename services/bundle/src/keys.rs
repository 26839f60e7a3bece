//! Key material: ed25519 signing keys, trusted public keys, key ids and the cluster sync
//! key, with their text file formats and random generation.
//!
//! Formats (one line each, a final newline, base64 with padding):
//! * secret key: `twinwall-ed25519-secret-v1 <base64 of the 32-byte seed>`
//! * public key: `twinwall-ed25519-public-v1 <base64 of the 32-byte key> [comment]`
//! * sync key:   `twinwall-sync-key-v1 <base64 of 32 random bytes>`
//!
//! Secret material never reaches `Debug`, `Display` or a log line: [`SigningKey`]'s own
//! `Debug` omits the secret, [`SyncKey`] redacts it, and the encoded secret strings are
//! wiped on drop ([`zeroize::Zeroizing`]).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// First word of a secret signing key file.
pub const SECRET_HEADER: &str = "twinwall-ed25519-secret-v1";
/// First word of a public key file.
pub const PUBLIC_HEADER: &str = "twinwall-ed25519-public-v1";
/// First word of a cluster sync key file.
pub const SYNC_HEADER: &str = "twinwall-sync-key-v1";
/// Largest key file accepted; key files are one short line.
pub const MAX_KEY_FILE: usize = 4096;

/// A key id: the first 8 bytes of SHA-256 over the 32-byte public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key could not be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random source failed.
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
    /// The key file could not be read.
    #[error(transparent)]
    Read(#[from] crate::fsio::FsError),
    /// The text is not a key of the expected type.
    #[error("{what}: expected a line starting with `{expected}`")]
    Header {
        /// Which file or key.
        what: String,
        /// The header word expected.
        expected: &'static str,
    },
    /// The key text is malformed.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which file or key.
        what: String,
        /// What is wrong (never the key's contents).
        reason: String,
    },
}

fn malformed(what: &str, reason: impl Into<String>) -> KeyError {
    KeyError::Malformed {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Generates a new signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(KeyError::Random)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Splits `HEADER <base64> [rest]` and decodes exactly 32 bytes; `what` names the source
/// in errors. The decoded bytes are wiped when dropped.
fn decode_line(
    text: &str,
    header: &'static str,
    what: &str,
    allow_comment: bool,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if text.len() > MAX_KEY_FILE {
        return Err(malformed(what, format!("longer than {MAX_KEY_FILE} bytes")));
    }
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.contains('\n') {
        return Err(malformed(what, "must be a single line"));
    }
    let mut parts = line.splitn(3, ' ');
    if parts.next() != Some(header) {
        return Err(KeyError::Header {
            what: what.to_owned(),
            expected: header,
        });
    }
    let b64 = parts
        .next()
        .ok_or_else(|| malformed(what, "the base64 key is missing after the header"))?;
    if parts.next().is_some() && !allow_comment {
        return Err(malformed(what, "unexpected text after the key"));
    }
    let bytes = Zeroizing::new(
        B64.decode(b64.trim_end_matches('\r'))
            .map_err(|_| malformed(what, "the key is not valid base64"))?,
    );
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        malformed(
            what,
            format!("the key must be 32 bytes, found {}", bytes.len()),
        )
    })?;
    Ok(Zeroizing::new(arr))
}

/// The secret key file's text. Wiped from memory when dropped.
pub fn encode_secret_key(key: &SigningKey) -> Zeroizing<String> {
    let seed = Zeroizing::new(key.to_bytes());
    let b64 = Zeroizing::new(B64.encode(seed.as_slice()));
    Zeroizing::new(format!("{SECRET_HEADER} {}\n", b64.as_str()))
}

/// Parses a secret key file's text; `what` names the file in errors.
pub fn parse_secret_key(text: &str, what: &str) -> Result<SigningKey, KeyError> {
    let seed = decode_line(text, SECRET_HEADER, what, false)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key file's text, with the key id as a comment.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!(
        "{PUBLIC_HEADER} {} key-id:{}\n",
        B64.encode(key.as_bytes()),
        KeyId::of(key)
    )
}

/// Parses a public key file's text (the comment after the key is ignored).
pub fn parse_public_key(text: &str, what: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_line(text, PUBLIC_HEADER, what, true)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| malformed(what, "not a valid ed25519 public key"))
}

/// The cluster sync key: 32 random bytes shared by both nodes of a pair; the sync service
/// authenticates its messages with it. `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SyncKey(Zeroizing<[u8; 32]>);

impl SyncKey {
    /// A new random sync key.
    pub fn generate() -> Result<SyncKey, KeyError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(KeyError::Random)?;
        Ok(SyncKey(k))
    }

    /// The raw key bytes (for the MAC; never log them).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key file's text. Wiped from memory when dropped.
    pub fn encode(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(B64.encode(self.0.as_slice()));
        Zeroizing::new(format!("{SYNC_HEADER} {}\n", b64.as_str()))
    }

    /// Parses a sync key file's text; `what` names the file in errors.
    pub fn parse(text: &str, what: &str) -> Result<SyncKey, KeyError> {
        decode_line(text, SYNC_HEADER, what, false).map(SyncKey)
    }
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncKey(<redacted>)")
    }
}

/// Reads a secret signing key file.
pub fn read_signing_key(path: &std::path::Path) -> Result<SigningKey, KeyError> {
    let text = crate::fsio::read_small(path, MAX_KEY_FILE as u64)?;
    parse_secret_key(&text, &path.display().to_string())
}

/// Reads a public key file.
pub fn read_public_key(path: &std::path::Path) -> Result<VerifyingKey, KeyError> {
    let text = crate::fsio::read_small(path, MAX_KEY_FILE as u64)?;
    parse_public_key(&text, &path.display().to_string())
}

/// Reads a cluster sync key file.
pub fn read_sync_key(path: &std::path::Path) -> Result<SyncKey, KeyError> {
    let text = crate::fsio::read_small(path, MAX_KEY_FILE as u64)?;
    SyncKey::parse(&text, &path.display().to_string())
}
