//! The bundle manifest: the JSON document that is signed, its typed model and its rules.
//!
//! The signature covers the manifest's exact bytes as they appear in the bundle; the
//! verifier parses those bytes and never re-serialises them, so there is no
//! canonicalisation step that could differ between signer and verifier.

use std::collections::BTreeSet;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Manifest format version this build writes and reads (the `format` field).
pub const MANIFEST_FORMAT: u32 = 1;
/// Most payload files one bundle may list.
pub const MAX_PAYLOADS: usize = 1024;
/// Longest payload file name in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest total payload size a manifest may declare (64 GiB): far above any OS image,
/// low enough that sums cannot overflow and a reader can reject absurd claims at once.
pub const MAX_TOTAL_PAYLOAD: u64 = 64 << 30;
/// Longest `cluster` and `compatible` strings.
pub const MAX_LABEL_LEN: usize = 128;
/// The `compatible` string of bundles for this generation of appliance.
pub const DEFAULT_COMPATIBLE: &str = "twinwall-1";

/// What a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A signed cluster config (`cluster.toml`).
    #[serde(rename = "config")]
    Config,
    /// An A/B OS update (slot image and whatever the image area puts beside it).
    #[serde(rename = "os-update")]
    OsUpdate,
}

impl Kind {
    /// The spelling used in the manifest and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::OsUpdate => "os-update",
        }
    }

    /// Parses the manifest / command-line spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "config" => Some(Kind::Config),
            "os-update" => Some(Kind::OsUpdate),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One payload file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadEntry {
    /// File name: 1..=255 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents, 64 lowercase hex digits.
    pub sha256: String,
}

/// The signed manifest, as typed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// What the bundle carries.
    pub kind: Kind,
    /// Monotonic version; anti-rollback compares it with the installed one.
    pub version: u64,
    /// Cluster name (`[cluster] name` for config bundles).
    pub cluster: String,
    /// Creation time, RFC 3339 UTC with seconds (`2026-12-02T04:00:00Z`).
    pub created: String,
    /// Which appliances may install it, e.g. [`DEFAULT_COMPATIBLE`].
    pub compatible: String,
    /// A signed rollback: may replace a newer installed version when the caller permits.
    pub rollback: bool,
    /// Every payload file, in the order they follow in the bundle.
    pub payloads: Vec<PayloadEntry>,
}

/// The manifest as it is on the wire; `kind` stays a string so that an unknown kind is
/// its own, clear reason rather than a generic JSON error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: u32,
    kind: String,
    version: u64,
    cluster: String,
    created: String,
    compatible: String,
    rollback: bool,
    payloads: Vec<PayloadEntry>,
}

/// Why manifest bytes are not an acceptable manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the manifest's shape (unknown or missing field, wrong type).
    #[error("manifest is not valid JSON of the expected shape: {reason}")]
    Parse {
        /// serde_json's message, with line and column inside the manifest.
        reason: String,
    },
    /// `kind` is neither `config` nor `os-update`.
    #[error("manifest kind `{kind}` is unknown (expected `config` or `os-update`)")]
    UnknownKind {
        /// The kind as written.
        kind: String,
    },
    /// A field has a value outside its rules.
    #[error("manifest field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field (`payloads[2].name`, `created`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a payload file name: it becomes a file name when a bundle is unpacked, so it
/// must not be able to name a path (`/`, `..`) or a hidden file.
pub fn check_payload_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1..={MAX_NAME_LEN} bytes long"));
    }
    if name.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {c:?}; only A-Z a-z 0-9 . _ - are allowed"
        ));
    }
    Ok(())
}

fn check_label(field: &str, value: &str) -> Result<(), ManifestError> {
    if value.is_empty() || value.len() > MAX_LABEL_LEN {
        return Err(invalid(field, format!("must be 1..={MAX_LABEL_LEN} bytes")));
    }
    if value.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(invalid(
            field,
            "only printable ASCII without spaces is allowed",
        ));
    }
    Ok(())
}

/// Checks an RFC 3339 UTC timestamp as the manifest requires it.
fn check_created(created: &str) -> Result<(), ManifestError> {
    if !created.ends_with('Z') {
        return Err(invalid("created", "must be RFC 3339 in UTC, ending in `Z`"));
    }
    humantime::parse_rfc3339(created)
        .map(|_| ())
        .map_err(|e| invalid("created", format!("{created:?} is not RFC 3339: {e}")))
}

impl Manifest {
    /// Parses and checks manifest bytes (exactly the bytes that were signed).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse {
            reason: e.to_string(),
        })?;
        let kind = Kind::parse(&raw.kind).ok_or_else(|| ManifestError::UnknownKind {
            kind: raw.kind.chars().take(64).collect(),
        })?;
        let m = Manifest {
            format: raw.format,
            kind,
            version: raw.version,
            cluster: raw.cluster,
            created: raw.created,
            compatible: raw.compatible,
            rollback: raw.rollback,
            payloads: raw.payloads,
        };
        m.check()?;
        Ok(m)
    }

    /// Checks every rule of a manifest (also run before signing).
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(invalid(
                "format",
                format!(
                    "{} is not supported (this build reads {MANIFEST_FORMAT})",
                    self.format
                ),
            ));
        }
        check_label("cluster", &self.cluster)?;
        check_label("compatible", &self.compatible)?;
        check_created(&self.created)?;
        if self.payloads.is_empty() {
            return Err(invalid("payloads", "a bundle carries at least one file"));
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(invalid(
                "payloads",
                format!("{} files, at most {MAX_PAYLOADS}", self.payloads.len()),
            ));
        }
        let mut names = BTreeSet::new();
        let mut total: u64 = 0;
        for (i, p) in self.payloads.iter().enumerate() {
            check_payload_name(&p.name)
                .map_err(|r| invalid(format!("payloads[{i}].name"), format!("{:?} {r}", p.name)))?;
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("payloads[{i}].name"),
                    format!("{:?} is listed twice", p.name),
                ));
            }
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(
                    format!("payloads[{i}].sha256"),
                    "must be 64 lowercase hex digits",
                ));
            }
            total = total.saturating_add(p.size);
            if total > MAX_TOTAL_PAYLOAD {
                return Err(invalid(
                    "payloads",
                    format!("total size exceeds {MAX_TOTAL_PAYLOAD} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The manifest's bytes as they are signed: pretty JSON with a final newline, so that
    /// a bundle's header stays readable in a hex dump.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }

    /// The entry of a payload file by name.
    pub fn payload(&self, name: &str) -> Option<&PayloadEntry> {
        self.payloads.iter().find(|p| p.name == name)
    }
}

/// Formats a time as the manifest's `created` (RFC 3339 UTC, whole seconds).
pub fn format_created(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
