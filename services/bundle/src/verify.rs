//! Bundle verification: a streaming reader over any `Read` that checks, in this order,
//! the container, the manifest, the signature, every payload (hashed as it passes), the
//! kind, compatibility, anti-rollback and, for config bundles, the config itself.
//!
//! The verifier stops at the first failure and names it. It writes nothing anywhere:
//! payload bytes go to a caller-supplied [`PayloadSink`], and what a sink received is
//! untrusted until [`verify_stream`] returns `Ok` (the caller stages, then commits).

use std::io::{self, Read};

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::config_check::{ConfigRejected, check_config};
use crate::format::{
    CONTAINER_VERSION, HEADER_LEN, MAGIC, MAX_MANIFEST_LEN, TAG_END, TAG_FILE, TAG_SIGNATURE,
};
use crate::keys::KeyId;
use crate::manifest::{Kind, MAX_NAME_LEN, Manifest, ManifestError, PayloadEntry};

/// The payload file a config bundle carries.
pub const CONFIG_PAYLOAD: &str = "cluster.toml";
/// Largest `cluster.toml` a config bundle may carry (16 MiB); it is held in memory to be
/// validated.
pub const MAX_CONFIG_LEN: u64 = 16 << 20;
/// Size of the buffer payload bytes stream through.
const CHUNK: usize = 64 * 1024;

/// What the installing side accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Public keys a bundle may be signed by.
    pub trusted: Vec<VerifyingKey>,
    /// The version installed now; a bundle must be newer (anti-rollback). `None` skips
    /// the check (first install).
    pub installed_version: Option<u64>,
    /// The kind required, if any.
    pub kind: Option<Kind>,
    /// The `compatible` string required, if any.
    pub compatible: Option<String>,
    /// Accept a signed rollback bundle (`rollback = true`) older than the installed
    /// version. Off unless an operator asks for it.
    pub allow_rollback: bool,
}

/// Why a bundle was rejected: the first check that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    // 1. container
    /// The first 8 bytes are not `TWBUNDLE`.
    #[error("not a twinwall bundle: bad magic at byte 0")]
    BadMagic,
    /// A container version this build does not read.
    #[error("bundle container version {found} is not supported (this build reads {supported})")]
    UnsupportedContainer {
        /// Version found at byte 8.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The reserved flags at byte 10 are not zero.
    #[error("bundle header: reserved flags at byte 10 are {flags:#06x}, must be 0")]
    ReservedFlags {
        /// Flags found.
        flags: u16,
    },
    /// The manifest length at byte 12 is zero or above the cap.
    #[error("bundle header: manifest length {len} at byte 12 is out of range 1..={max}")]
    ManifestLength {
        /// Length claimed.
        len: u32,
        /// The cap.
        max: u32,
    },
    /// The signature section is absent where it must follow the manifest.
    #[error("bundle is not signed: no signature section at byte {offset}")]
    MissingSignature {
        /// Where the signature section should start.
        offset: u64,
    },
    /// The input ended inside a structure.
    #[error("bundle truncated: {what} ends early at byte {offset}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes read when the input ended.
        offset: u64,
    },
    /// A section is not well-formed.
    #[error("bundle malformed at byte {offset}: {reason}")]
    Malformed {
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// Bytes follow the end marker.
    #[error("bundle has trailing data after its end marker, at byte {offset}")]
    TrailingData {
        /// Where the trailing data starts.
        offset: u64,
    },
    /// Reading the input failed.
    #[error("reading the bundle failed at byte {offset}: {source}")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The IO error.
        source: io::Error,
    },
    // 2. manifest
    /// The manifest does not parse or breaks a rule.
    #[error("bundle manifest: {0}")]
    Manifest(ManifestError),
    // 3. signature
    /// The caller trusts no key at all.
    #[error("no trusted public keys given; cannot verify any bundle")]
    NoTrustedKeys,
    /// Signed by a key that is not trusted.
    #[error("bundle is signed by key {key_id}, which is not a trusted key (trusted: {trusted})")]
    UnknownKey {
        /// The signing key's id from the bundle.
        key_id: KeyId,
        /// The ids of the trusted keys, comma-separated.
        trusted: String,
    },
    /// The signature does not match the manifest.
    #[error(
        "bad signature: the manifest is not signed by trusted key {key_id} (altered or corrupt bundle)"
    )]
    BadSignature {
        /// The trusted key it claimed.
        key_id: KeyId,
    },
    // 4. payloads
    /// A file the manifest does not list.
    #[error("bundle contains file `{name}` at byte {offset}, which the manifest does not list")]
    ExtraFile {
        /// The file's name (lossy UTF-8).
        name: String,
        /// Where its section starts.
        offset: u64,
    },
    /// A listed file appears twice.
    #[error("bundle contains file `{name}` twice (second copy at byte {offset})")]
    DuplicateFile {
        /// The file's name.
        name: String,
        /// Where the second copy starts.
        offset: u64,
    },
    /// Files are not in manifest order.
    #[error("bundle file order differs from the manifest: expected `{expected}`, found `{found}`")]
    OutOfOrder {
        /// The file the manifest lists next.
        expected: String,
        /// The file found.
        found: String,
    },
    /// A listed file is absent.
    #[error("bundle lacks file `{name}` listed in the manifest")]
    MissingFile {
        /// The missing file.
        name: String,
    },
    /// A file's size differs from the manifest.
    #[error("file `{name}`: size {found} differs from the manifest's {expected}")]
    SizeMismatch {
        /// The file.
        name: String,
        /// Size in the manifest.
        expected: u64,
        /// Size in the bundle.
        found: u64,
    },
    /// A file's SHA-256 differs from the manifest.
    #[error("file `{name}`: sha256 {found} differs from the manifest's {expected}")]
    HashMismatch {
        /// The file.
        name: String,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the bytes in the bundle.
        found: String,
    },
    /// The payload sink failed (the caller's staging area).
    #[error("storing file `{name}` failed: {source}")]
    Sink {
        /// The file.
        name: String,
        /// The IO error.
        source: io::Error,
    },
    // 5. kind
    /// A different kind than required.
    #[error("bundle is a {found} bundle, expected a {expected} bundle")]
    WrongKind {
        /// Required.
        expected: Kind,
        /// Found.
        found: Kind,
    },
    // 6. compatibility
    /// Built for other appliances.
    #[error("bundle is for `{found}`, this appliance accepts `{expected}`")]
    Incompatible {
        /// Required.
        expected: String,
        /// Found.
        found: String,
    },
    // 7. anti-rollback
    /// Not newer than the installed version.
    #[error(
        "bundle version {version} is not newer than installed version {installed} (anti-rollback)"
    )]
    NotNewer {
        /// The bundle's version.
        version: u64,
        /// The installed version.
        installed: u64,
    },
    /// A signed rollback, but the caller did not permit rollbacks.
    #[error(
        "bundle version {version} is a signed rollback below installed version {installed}, but rollback was not permitted"
    )]
    RollbackNotPermitted {
        /// The bundle's version.
        version: u64,
        /// The installed version.
        installed: u64,
    },
    // 8. config
    /// A config bundle must carry exactly `cluster.toml`.
    #[error("config bundle must carry exactly one file `{CONFIG_PAYLOAD}`: {reason}")]
    ConfigPayload {
        /// What is wrong.
        reason: String,
    },
    /// The config inside does not validate.
    #[error("config inside the bundle does not validate: {0}")]
    ConfigInvalid(ConfigRejected),
    /// The config's `[cluster]` disagrees with the signed manifest.
    #[error("config `[cluster] {field}` is {config} but the manifest says {manifest}")]
    ConfigMismatch {
        /// `name` or `version`.
        field: &'static str,
        /// In the manifest.
        manifest: String,
        /// In the config.
        config: String,
    },
}

impl VerifyError {
    /// A stable, machine-readable name of the reason (`bad_signature`, `not_newer`, ...).
    pub fn code(&self) -> &'static str {
        use VerifyError::*;
        match self {
            BadMagic => "bad_magic",
            UnsupportedContainer { .. } => "unsupported_container",
            ReservedFlags { .. } => "reserved_flags",
            ManifestLength { .. } => "manifest_length",
            MissingSignature { .. } => "missing_signature",
            Truncated { .. } => "truncated",
            Malformed { .. } => "malformed",
            TrailingData { .. } => "trailing_data",
            Read { .. } => "read_error",
            Manifest(ManifestError::UnknownKind { .. }) => "unknown_kind",
            Manifest(_) => "bad_manifest",
            NoTrustedKeys => "no_trusted_keys",
            UnknownKey { .. } => "unknown_key",
            BadSignature { .. } => "bad_signature",
            ExtraFile { .. } => "extra_file",
            DuplicateFile { .. } => "duplicate_file",
            OutOfOrder { .. } => "out_of_order",
            MissingFile { .. } => "missing_file",
            SizeMismatch { .. } => "size_mismatch",
            HashMismatch { .. } => "hash_mismatch",
            Sink { .. } => "sink_error",
            WrongKind { .. } => "wrong_kind",
            Incompatible { .. } => "incompatible",
            NotNewer { .. } => "not_newer",
            RollbackNotPermitted { .. } => "rollback_not_permitted",
            ConfigPayload { .. } => "config_payload",
            ConfigInvalid(_) => "config_invalid",
            ConfigMismatch { .. } => "config_mismatch",
        }
    }
}

/// Where payload bytes go while a bundle streams through [`verify_stream`]. Everything a
/// sink receives is unverified until `verify_stream` returns `Ok`.
pub trait PayloadSink {
    /// A payload section starts (its size already matches the manifest).
    fn begin(&mut self, entry: &PayloadEntry) -> io::Result<()>;
    /// The next chunk of the current payload.
    fn write(&mut self, chunk: &[u8]) -> io::Result<()>;
    /// The current payload ended and its hash matched.
    fn end(&mut self, entry: &PayloadEntry) -> io::Result<()>;
}

/// A sink that drops the bytes: verification only.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl PayloadSink for DiscardSink {
    fn begin(&mut self, _: &PayloadEntry) -> io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: &PayloadEntry) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that keeps every payload in memory, in manifest order. It grows with the bytes
/// actually read, never with a size a header claims.
#[derive(Debug, Default)]
pub struct MemorySink {
    /// The payloads received so far.
    pub payloads: Vec<Vec<u8>>,
}

impl PayloadSink for MemorySink {
    fn begin(&mut self, _: &PayloadEntry) -> io::Result<()> {
        self.payloads.push(Vec::new());
        Ok(())
    }
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if let Some(last) = self.payloads.last_mut() {
            last.extend_from_slice(chunk);
        }
        Ok(())
    }
    fn end(&mut self, _: &PayloadEntry) -> io::Result<()> {
        Ok(())
    }
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The exact manifest bytes that were signed.
    pub manifest_bytes: Vec<u8>,
    /// Which trusted key signed it.
    pub key_id: KeyId,
    /// For config bundles, the `cluster.toml` text (validated).
    pub config: Option<String>,
    /// Payload bytes in manifest order; filled by [`verify`], empty after
    /// [`verify_stream`] (the sink received them).
    pub payloads: Vec<Vec<u8>>,
}

impl VerifiedBundle {
    /// A payload's bytes by name (only after [`verify`]).
    pub fn payload(&self, name: &str) -> Option<&[u8]> {
        let i = self.manifest.payloads.iter().position(|p| p.name == name)?;
        self.payloads.get(i).map(Vec::as_slice)
    }
}

/// Verifies a bundle held in memory; the payloads come back in the result.
pub fn verify(bytes: &[u8], policy: &Policy) -> Result<VerifiedBundle, VerifyError> {
    let mut sink = MemorySink::default();
    let mut v = verify_stream(bytes, policy, &mut sink)?;
    v.payloads = sink.payloads;
    Ok(v)
}

/// A reader that knows its offset, so every error can say where.
struct Counted<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Counted<R> {
    /// Fills `buf` completely or reports where the input ended.
    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), VerifyError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(VerifyError::Truncated {
                        what,
                        offset: self.offset,
                    });
                }
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(VerifyError::Read {
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], VerifyError> {
        let mut b = [0u8; N];
        self.exact(&mut b, what)?;
        Ok(b)
    }

    /// True when the input has no byte left.
    fn at_eof(&mut self) -> Result<bool, VerifyError> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(VerifyError::Read {
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
    }
}

/// Verifies a bundle as it streams from `reader` (an OS update of any size passes through
/// a 64 KiB buffer), feeding payload bytes to `sink`.
pub fn verify_stream<R: Read>(
    reader: R,
    policy: &Policy,
    sink: &mut dyn PayloadSink,
) -> Result<VerifiedBundle, VerifyError> {
    let result = verify_inner(reader, policy, sink);
    match &result {
        Ok(v) => tracing::info!(
            kind = %v.manifest.kind,
            version = v.manifest.version,
            cluster = %v.manifest.cluster,
            key_id = %v.key_id,
            "bundle verified"
        ),
        Err(e) => tracing::debug!(reason = %e, code = e.code(), "bundle rejected"),
    }
    result
}

fn verify_inner<R: Read>(
    reader: R,
    policy: &Policy,
    sink: &mut dyn PayloadSink,
) -> Result<VerifiedBundle, VerifyError> {
    let mut r = Counted {
        inner: reader,
        offset: 0,
    };

    // 1. Container: header, manifest bytes and signature section framing.
    let header: [u8; HEADER_LEN] = r.array("header")?;
    if header[..8] != MAGIC {
        return Err(VerifyError::BadMagic);
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    if version != CONTAINER_VERSION {
        return Err(VerifyError::UnsupportedContainer {
            found: version,
            supported: CONTAINER_VERSION,
        });
    }
    let flags = u16::from_be_bytes([header[10], header[11]]);
    if flags != 0 {
        return Err(VerifyError::ReservedFlags { flags });
    }
    let mlen = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    if mlen == 0 || mlen > MAX_MANIFEST_LEN {
        return Err(VerifyError::ManifestLength {
            len: mlen,
            max: MAX_MANIFEST_LEN,
        });
    }
    // Capped above at 1 MiB, so this allocation is bounded whatever the header says.
    let mut manifest_bytes = vec![0u8; mlen as usize];
    r.exact(&mut manifest_bytes, "manifest")?;
    let sig_offset = r.offset;
    let tag: [u8; 4] = r.array("signature section")?;
    if tag != TAG_SIGNATURE {
        return Err(VerifyError::MissingSignature { offset: sig_offset });
    }
    let key_id = KeyId(r.array("signature key id")?);
    let sig_bytes: [u8; 64] = r.array("signature")?;

    // 2. Manifest.
    let manifest = Manifest::parse(&manifest_bytes).map_err(VerifyError::Manifest)?;

    // 3. Signature, by a trusted key, over the exact manifest bytes.
    if policy.trusted.is_empty() {
        return Err(VerifyError::NoTrustedKeys);
    }
    let key = policy
        .trusted
        .iter()
        .find(|k| KeyId::of(k) == key_id)
        .ok_or_else(|| VerifyError::UnknownKey {
            key_id,
            trusted: policy
                .trusted
                .iter()
                .map(|k| KeyId::of(k).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let signature = Signature::from_bytes(&sig_bytes);
    key.verify_strict(&manifest_bytes, &signature)
        .map_err(|_| VerifyError::BadSignature { key_id })?;

    // 4. Payloads: framing, presence, order, size, hash — streamed.
    let config = stream_payloads(&mut r, &manifest, sink)?;

    // 5. Kind.
    if let Some(expected) = policy.kind
        && expected != manifest.kind
    {
        return Err(VerifyError::WrongKind {
            expected,
            found: manifest.kind,
        });
    }
    // 6. Compatibility.
    if let Some(expected) = &policy.compatible
        && *expected != manifest.compatible
    {
        return Err(VerifyError::Incompatible {
            expected: expected.clone(),
            found: manifest.compatible.clone(),
        });
    }
    // 7. Anti-rollback.
    if let Some(installed) = policy.installed_version {
        check_version(&manifest, installed, policy.allow_rollback)?;
    }
    // 8. The config inside.
    let config = if manifest.kind == Kind::Config {
        Some(check_config_payload(&manifest, config)?)
    } else {
        None
    };

    Ok(VerifiedBundle {
        manifest,
        manifest_bytes,
        key_id,
        config,
        payloads: Vec::new(),
    })
}

/// Reads every payload section and the end marker; returns the config payload's bytes
/// when this is a config bundle carrying a small enough `cluster.toml`.
fn stream_payloads<R: Read>(
    r: &mut Counted<R>,
    manifest: &Manifest,
    sink: &mut dyn PayloadSink,
) -> Result<Option<Vec<u8>>, VerifyError> {
    let mut next = 0usize;
    let mut config = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let section = r.offset;
        let tag: [u8; 4] = r.array("section tag")?;
        if tag == TAG_END {
            break;
        }
        if tag != TAG_FILE {
            return Err(VerifyError::Malformed {
                offset: section,
                reason: format!("unknown section tag {:02x?}", tag),
            });
        }
        let name_len = u16::from_be_bytes(r.array("file name length")?) as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(VerifyError::Malformed {
                offset: section + 4,
                reason: format!("file name length {name_len} is out of range 1..={MAX_NAME_LEN}"),
            });
        }
        let mut name_buf = [0u8; MAX_NAME_LEN];
        r.exact(&mut name_buf[..name_len], "file name")?;
        let name = String::from_utf8_lossy(&name_buf[..name_len]).into_owned();
        let idx = manifest.payloads.iter().position(|p| p.name == name);
        let entry = match idx {
            None => {
                return Err(VerifyError::ExtraFile {
                    // Not a manifest name, so possibly anything: keep it on one line.
                    name: name.escape_debug().to_string(),
                    offset: section,
                });
            }
            Some(i) if i < next => {
                return Err(VerifyError::DuplicateFile {
                    name,
                    offset: section,
                });
            }
            Some(i) if i > next => {
                return Err(VerifyError::OutOfOrder {
                    expected: manifest.payloads[next].name.clone(),
                    found: name,
                });
            }
            Some(i) => &manifest.payloads[i],
        };
        let size = u64::from_be_bytes(r.array("file size")?);
        if size != entry.size {
            return Err(VerifyError::SizeMismatch {
                name,
                expected: entry.size,
                found: size,
            });
        }
        let sink_err = |source| VerifyError::Sink {
            name: entry.name.clone(),
            source,
        };
        sink.begin(entry).map_err(sink_err)?;
        let keep = manifest.kind == Kind::Config && entry.name == CONFIG_PAYLOAD;
        let mut kept = Vec::new();
        let mut hasher = Sha256::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            r.exact(&mut buf[..n], "file data")?;
            hasher.update(&buf[..n]);
            sink.write(&buf[..n]).map_err(sink_err)?;
            if keep && (kept.len() as u64) < MAX_CONFIG_LEN {
                kept.extend_from_slice(&buf[..n]);
            }
            left -= n as u64;
        }
        let found = hex::encode(hasher.finalize());
        if found != entry.sha256 {
            return Err(VerifyError::HashMismatch {
                name,
                expected: entry.sha256.clone(),
                found,
            });
        }
        sink.end(entry).map_err(sink_err)?;
        if keep {
            config = Some(kept);
        }
        next += 1;
    }
    if let Some(missing) = manifest.payloads.get(next) {
        return Err(VerifyError::MissingFile {
            name: missing.name.clone(),
        });
    }
    let end = r.offset;
    if !r.at_eof()? {
        return Err(VerifyError::TrailingData { offset: end });
    }
    Ok(config)
}

/// Anti-rollback: newer than installed, or a signed rollback the caller permits.
pub fn check_version(
    manifest: &Manifest,
    installed: u64,
    allow_rollback: bool,
) -> Result<(), VerifyError> {
    let version = manifest.version;
    if version > installed {
        return Ok(());
    }
    if version < installed && manifest.rollback {
        if allow_rollback {
            tracing::warn!(version, installed, "accepting a signed rollback bundle");
            return Ok(());
        }
        return Err(VerifyError::RollbackNotPermitted { version, installed });
    }
    Err(VerifyError::NotNewer { version, installed })
}

fn check_config_payload(
    manifest: &Manifest,
    config: Option<Vec<u8>>,
) -> Result<String, VerifyError> {
    let bad = |reason: String| VerifyError::ConfigPayload { reason };
    if manifest.payloads.len() != 1 || manifest.payloads[0].name != CONFIG_PAYLOAD {
        let names: Vec<&str> = manifest.payloads.iter().map(|p| p.name.as_str()).collect();
        return Err(bad(format!("it carries {names:?}")));
    }
    if manifest.payloads[0].size > MAX_CONFIG_LEN {
        return Err(bad(format!(
            "it is {} bytes, at most {MAX_CONFIG_LEN}",
            manifest.payloads[0].size
        )));
    }
    let bytes = config.ok_or_else(|| bad("it was not read".into()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "it is not UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let facts = check_config(CONFIG_PAYLOAD, &text).map_err(VerifyError::ConfigInvalid)?;
    if facts.cluster != manifest.cluster {
        return Err(VerifyError::ConfigMismatch {
            field: "name",
            manifest: format!("{:?}", manifest.cluster),
            config: format!("{:?}", facts.cluster),
        });
    }
    if facts.version != manifest.version {
        return Err(VerifyError::ConfigMismatch {
            field: "version",
            manifest: manifest.version.to_string(),
            config: facts.version.to_string(),
        });
    }
    Ok(text)
}
