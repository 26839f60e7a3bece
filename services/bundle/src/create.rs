//! Bundle creation: build the manifest from the payloads, sign its exact bytes, write the
//! container. Payloads are in memory or files; file payloads are hashed in one pass and
//! copied in a second, and a file that changes in between is an error, not a bad bundle.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::config_check::{ConfigRejected, check_config};
use crate::format::{self, MAX_MANIFEST_LEN};
use crate::fsio::{self, FsError};
use crate::keys::KeyId;
use crate::manifest::{
    DEFAULT_COMPATIBLE, Kind, MANIFEST_FORMAT, Manifest, ManifestError, PayloadEntry,
    format_created,
};
use crate::verify::CONFIG_PAYLOAD;

/// The signed fields of a bundle other than its kind and payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// Monotonic version.
    pub version: u64,
    /// Cluster name.
    pub cluster: String,
    /// Which appliances may install it.
    pub compatible: String,
    /// Creation time (see [`created_now`] for SOURCE_DATE_EPOCH).
    pub created: SystemTime,
    /// A signed rollback (may replace a newer version when the installer permits).
    pub rollback: bool,
}

/// Where a payload's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, read twice (hash, then copy): for large OS images.
    File(PathBuf),
}

/// One payload file to put in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Name in the bundle (see [`crate::manifest::check_payload_name`]).
    pub name: String,
    /// Its contents.
    pub source: PayloadSource,
}

impl Payload {
    /// A payload held in memory.
    pub fn bytes(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Payload {
        Payload {
            name: name.into(),
            source: PayloadSource::Bytes(data.into()),
        }
    }

    /// A payload read from a file.
    pub fn file(name: impl Into<String>, path: impl Into<PathBuf>) -> Payload {
        Payload {
            name: name.into(),
            source: PayloadSource::File(path.into()),
        }
    }
}

/// Why a bundle could not be created. Nothing is left behind on any of these.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The config to sign does not validate.
    #[error("config does not validate: {0}")]
    InvalidConfig(ConfigRejected),
    /// The manifest that would be written breaks a rule.
    #[error("cannot build the manifest: {0}")]
    Manifest(ManifestError),
    /// The manifest is larger than a reader accepts.
    #[error("manifest would be {len} bytes, more than the {max}-byte limit")]
    ManifestTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// SOURCE_DATE_EPOCH is set but not a Unix timestamp.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")]
    SourceDateEpoch {
        /// The variable's value.
        value: String,
    },
    /// A payload file could not be read.
    #[error("reading payload file {path}: {source}", path = path.display())]
    ReadPayload {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// A payload file changed between hashing and copying.
    #[error("payload file {path} changed while the bundle was written", path = path.display())]
    PayloadChanged {
        /// The file.
        path: PathBuf,
    },
    /// Writing the bundle failed.
    #[error("writing the bundle: {0}")]
    Write(io::Error),
    /// Storing the bundle file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The creation time to sign: `SOURCE_DATE_EPOCH` when set (reproducible builds),
/// otherwise the current time; whole seconds either way.
pub fn created_now() -> Result<SystemTime, CreateError> {
    created_from(
        std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
        SystemTime::now(),
    )
}

/// [`created_now`]'s pure core: the `SOURCE_DATE_EPOCH` value, if any, and the clock.
pub fn created_from(epoch: Option<&str>, now: SystemTime) -> Result<SystemTime, CreateError> {
    match epoch {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| CreateError::SourceDateEpoch { value: v.into() }),
        None => {
            let secs = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        }
    }
}

fn hash_source(source: &PayloadSource) -> Result<(u64, String), CreateError> {
    match source {
        PayloadSource::Bytes(b) => Ok((b.len() as u64, hex::encode(Sha256::digest(b)))),
        PayloadSource::File(path) => {
            let rd = |source| CreateError::ReadPayload {
                path: path.clone(),
                source,
            };
            let mut f = File::open(path).map_err(rd)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n_total = 0u64;
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        n_total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(rd(e)),
                }
            }
            Ok((n_total, hex::encode(h.finalize())))
        }
    }
}

/// Builds the manifest for these payloads (hashing them).
pub fn build_manifest(
    kind: Kind,
    meta: &BundleMeta,
    payloads: &[Payload],
) -> Result<Manifest, CreateError> {
    let mut entries = Vec::with_capacity(payloads.len());
    for p in payloads {
        let (size, sha256) = hash_source(&p.source)?;
        entries.push(PayloadEntry {
            name: p.name.clone(),
            size,
            sha256,
        });
    }
    let m = Manifest {
        format: MANIFEST_FORMAT,
        kind,
        version: meta.version,
        cluster: meta.cluster.clone(),
        created: format_created(meta.created),
        compatible: meta.compatible.clone(),
        rollback: meta.rollback,
        payloads: entries,
    };
    m.check().map_err(CreateError::Manifest)?;
    Ok(m)
}

/// Signs `manifest` and writes the whole bundle to `out`, streaming file payloads.
/// This does not check a config payload; [`create_config`] does.
pub fn write_bundle<W: Write>(
    manifest: &Manifest,
    payloads: &[Payload],
    key: &SigningKey,
    out: &mut W,
) -> Result<(), CreateError> {
    let bytes = manifest.to_bytes();
    if bytes.len() > MAX_MANIFEST_LEN as usize {
        return Err(CreateError::ManifestTooLarge {
            len: bytes.len(),
            max: MAX_MANIFEST_LEN,
        });
    }
    let signature = key.sign(&bytes);
    let key_id = KeyId::of(&key.verifying_key());
    format::write_head(out, &bytes, &key_id.0, &signature.to_bytes())
        .map_err(CreateError::Write)?;
    for (p, e) in payloads.iter().zip(&manifest.payloads) {
        format::write_file_header(out, &e.name, e.size).map_err(CreateError::Write)?;
        match &p.source {
            PayloadSource::Bytes(b) => out.write_all(b).map_err(CreateError::Write)?,
            PayloadSource::File(path) => copy_checked(path, e, out)?,
        }
    }
    format::write_end(out).map_err(CreateError::Write)?;
    out.flush().map_err(CreateError::Write)?;
    tracing::info!(kind = %manifest.kind, version = manifest.version, key_id = %key_id, "bundle written");
    Ok(())
}

/// Copies a file payload, re-hashing it so a change since hashing is caught.
fn copy_checked<W: Write>(
    path: &Path,
    entry: &PayloadEntry,
    out: &mut W,
) -> Result<(), CreateError> {
    let rd = |source| CreateError::ReadPayload {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(rd)?;
    let mut limited = f.take(entry.size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rd(e)),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CreateError::Write)?;
        n_total += n as u64;
    }
    let mut f = limited.into_inner();
    let mut extra = [0u8; 1];
    let grew = f.read(&mut extra).map_err(rd)? != 0;
    if n_total != entry.size || grew || hex::encode(h.finalize()) != entry.sha256 {
        return Err(CreateError::PayloadChanged {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Creates a bundle of any kind in memory (the image area's entry point for OS
/// updates takes [`create_file`] instead for large payloads).
pub fn create(
    kind: Kind,
    meta: &BundleMeta,
    payloads: &[Payload],
    key: &SigningKey,
) -> Result<Vec<u8>, CreateError> {
    if kind == Kind::Config {
        check_config_payloads(payloads)?;
    }
    let manifest = build_manifest(kind, meta, payloads)?;
    let mut out = Vec::new();
    write_bundle(&manifest, payloads, key, &mut out)?;
    Ok(out)
}

/// Creates a bundle file atomically (temporary file in the same directory, fsync,
/// rename): on any error `out` is untouched. Returns the signed manifest.
pub fn create_file(
    kind: Kind,
    meta: &BundleMeta,
    payloads: &[Payload],
    key: &SigningKey,
    out: &Path,
) -> Result<Manifest, CreateError> {
    if kind == Kind::Config {
        check_config_payloads(payloads)?;
    }
    let manifest = build_manifest(kind, meta, payloads)?;
    fsio::write_atomic::<CreateError>(out, 0o644, true, |f| {
        let mut w = BufWriter::new(f);
        write_bundle(&manifest, payloads, key, &mut w)?;
        w.into_inner()
            .map_err(|e| CreateError::Write(e.into_error()))?;
        Ok(())
    })?;
    Ok(manifest)
}

/// A config bundle's payloads: exactly `cluster.toml`, and it validates.
fn check_config_payloads(payloads: &[Payload]) -> Result<(), CreateError> {
    let [p] = payloads else {
        return Err(CreateError::InvalidConfig(ConfigRejected {
            diagnostics: vec![format!(
                "a config bundle carries exactly one file `{CONFIG_PAYLOAD}`"
            )],
        }));
    };
    let text = match &p.source {
        PayloadSource::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| {
            CreateError::InvalidConfig(ConfigRejected {
                diagnostics: vec![format!("{CONFIG_PAYLOAD}: not UTF-8 text")],
            })
        })?,
        PayloadSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| CreateError::ReadPayload {
                path: path.clone(),
                source,
            })?
        }
    };
    if p.name != CONFIG_PAYLOAD {
        return Err(CreateError::InvalidConfig(ConfigRejected {
            diagnostics: vec![format!(
                "the config payload must be named `{CONFIG_PAYLOAD}`"
            )],
        }));
    }
    check_config(CONFIG_PAYLOAD, &text).map_err(CreateError::InvalidConfig)?;
    Ok(())
}

/// The signed fields a config bundle takes from its config.
pub fn config_meta(config_name: &str, text: &str) -> Result<BundleMeta, CreateError> {
    let facts = check_config(config_name, text).map_err(CreateError::InvalidConfig)?;
    Ok(BundleMeta {
        version: facts.version,
        cluster: facts.cluster,
        compatible: DEFAULT_COMPATIBLE.to_owned(),
        created: created_now()?,
        rollback: false,
    })
}
