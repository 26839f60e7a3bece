//! The appliance's userland from pinned Debian packages: the manifest
//! (`rootfs/packages.toml`: which packages and which of their files), the lock
//! (`rootfs/packages.lock`: exact version, .deb file name and sha256 of each), refreshing the
//! lock (`twinwall image lock`), fetching with `apt-get download` into a cache verified
//! against the lock, unpacking with `dpkg-deb -x`, and copying the selected files into the
//! root tree. Nothing else of a package reaches the image: no shell, no package manager.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::tool::{self, ToolError};

/// Errors of manifest, lock, fetch and unpack.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A manifest or lock file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A manifest or lock file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A manifest package has no lock entry.
    #[error(
        "package {package} is in {manifest} but not in the lock file; run `twinwall image lock`"
    )]
    NotLocked {
        /// Package name.
        package: String,
        /// Manifest path.
        manifest: PathBuf,
    },
    /// apt could not fetch a pinned package.
    #[error("cannot fetch package {package} {version}: {source}")]
    Fetch {
        /// Package.
        package: String,
        /// Pinned version.
        version: String,
        /// The apt-get failure.
        source: ToolError,
    },
    /// A fetched .deb does not match the lock.
    #[error("package {package} {version}: {file} has sha256 {actual}, the lock pins {expected}")]
    Checksum {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// The .deb.
        file: PathBuf,
        /// Pinned.
        expected: String,
        /// Found.
        actual: String,
    },
    /// No candidate version known to apt (for `image lock`).
    #[error("apt knows no candidate version of package {package} (run apt-get update?)")]
    NoCandidate {
        /// Package.
        package: String,
    },
    /// A file pattern of the manifest matched nothing in the package.
    #[error("package {package}: file pattern {pattern:?} matches nothing")]
    NoMatch {
        /// Package.
        package: String,
        /// The pattern.
        pattern: String,
    },
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `rootfs/packages.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Debian suite the pins come from (documentation; apt's sources decide).
    pub suite: String,
    /// Architecture.
    pub arch: String,
    /// The kernel package (`linux-image-6.1.0-N-amd64`).
    pub kernel: String,
    /// Userland packages and the files taken from each.
    #[serde(rename = "package")]
    pub packages: Vec<PackageSpec>,
}

/// One userland package of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    /// Debian package name.
    pub name: String,
    /// Files to take, as globs relative to the package root (`usr/sbin/nft`,
    /// `lib/x86_64-linux-gnu/libc.so.6`); symlinks are copied as symlinks.
    pub files: Vec<String>,
    /// Why the package is there (documentation).
    #[serde(default)]
    pub why: String,
}

/// `rootfs/packages.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Locked packages by name (the kernel included).
    #[serde(rename = "package")]
    pub packages: Vec<Locked>,
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    /// Package name.
    pub name: String,
    /// Exact Debian version.
    pub version: String,
    /// Architecture of the .deb (`amd64` or `all`).
    pub arch: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

impl Locked {
    /// The file name `apt-get download` gives the .deb (the epoch's `:` as `%3a`).
    pub fn deb_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RootfsError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    toml::from_str(&text).map_err(|e| RootfsError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

impl Manifest {
    /// Reads and parses a manifest.
    pub fn load(path: &Path) -> Result<Self, RootfsError> {
        read_toml(path)
    }

    /// Every package name: the kernel first.
    pub fn names(&self) -> Vec<&str> {
        std::iter::once(self.kernel.as_str())
            .chain(self.packages.iter().map(|p| p.name.as_str()))
            .collect()
    }
}

impl Lock {
    /// Reads and parses a lock file.
    pub fn load(path: &Path) -> Result<Self, RootfsError> {
        read_toml(path)
    }

    /// Serialises with a header comment.
    pub fn to_toml(&self) -> String {
        format!(
            "# Generated by `twinwall image lock` from packages.toml: exact versions and sha256\n\
             # of every .deb that goes into the image. Do not edit by hand.\n\n{}",
            toml::to_string(self).expect("lock serialises")
        )
    }

    /// The entry of a package.
    pub fn get(&self, name: &str) -> Option<&Locked> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Checks that every manifest package is locked; returns them in manifest order.
    pub fn resolve<'a>(
        &'a self,
        manifest: &Manifest,
        manifest_path: &Path,
    ) -> Result<Vec<&'a Locked>, RootfsError> {
        manifest
            .names()
            .into_iter()
            .map(|n| {
                self.get(n).ok_or_else(|| RootfsError::NotLocked {
                    package: n.into(),
                    manifest: manifest_path.to_path_buf(),
                })
            })
            .collect()
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, RootfsError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// apt's candidate version of a package (from `apt-cache policy`).
pub fn candidate(package: &str) -> Result<String, RootfsError> {
    let out = tool::run("apt-cache", ["policy", package], None)?;
    parse_candidate(&String::from_utf8_lossy(&out)).ok_or_else(|| RootfsError::NoCandidate {
        package: package.into(),
    })
}

/// The `Candidate:` line of `apt-cache policy` output.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// Downloads `name=version` into `cache` unless a file of that name is there, and checks
/// it against `sha256` when given. Returns the .deb's path and its sha256.
pub fn fetch(
    cache: &Path,
    locked: &Locked,
    verify: bool,
) -> Result<(PathBuf, String), RootfsError> {
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let path = cache.join(locked.deb_name());
    if !path.exists() {
        tracing::info!(package = %locked.name, version = %locked.version, "apt-get download");
        tool::run_env(
            "sh",
            [
                "-c",
                "cd \"$1\" && exec apt-get download -q \"$2\"",
                "sh",
                &cache.display().to_string(),
                &format!("{}={}", locked.name, locked.version),
            ],
            None,
            &[],
        )
        .map_err(|source| RootfsError::Fetch {
            package: locked.name.clone(),
            version: locked.version.clone(),
            source,
        })?;
    }
    let actual = sha256_file(&path)?;
    if verify && actual != locked.sha256 {
        return Err(RootfsError::Checksum {
            package: locked.name.clone(),
            version: locked.version.clone(),
            file: path,
            expected: locked.sha256.clone(),
            actual,
        });
    }
    Ok((path, actual))
}

/// Re-resolves the manifest against apt: candidate versions now, .debs fetched, sha256
/// recorded. Returns the new lock (the caller writes it).
pub fn refresh_lock(manifest: &Manifest, cache: &Path) -> Result<Lock, RootfsError> {
    let mut packages = Vec::new();
    for name in manifest.names() {
        let version = candidate(name)?;
        let mut entry = Locked {
            name: name.into(),
            version,
            arch: manifest.arch.clone(),
            sha256: String::new(),
        };
        // Architecture-independent packages are named `_all.deb`; find out from apt.
        let arch = tool::run(
            "apt-cache",
            ["show", &format!("{name}={}", entry.version)],
            None,
        )
        .map(|o| {
            String::from_utf8_lossy(&o)
                .lines()
                .find_map(|l| l.strip_prefix("Architecture: ").map(str::to_owned))
        })
        .ok()
        .flatten();
        if let Some(a) = arch {
            entry.arch = a;
        }
        let (_, sha) = fetch(cache, &entry, false)?;
        entry.sha256 = sha;
        packages.push(entry);
    }
    Ok(Lock { packages })
}

/// Unpacks a .deb into `cache/unpacked/NAME_VERSION` once; returns that directory.
pub fn unpack(cache: &Path, deb: &Path, locked: &Locked) -> Result<PathBuf, RootfsError> {
    let dir = cache.join("unpacked").join(format!(
        "{}_{}",
        locked.name,
        locked.version.replace(':', "%3a")
    ));
    let stamp = dir.join(".twinwall-unpacked");
    if stamp.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&locked.sha256) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    tool::run(
        "dpkg-deb",
        ["-x", &deb.display().to_string(), &dir.display().to_string()],
        None,
    )?;
    std::fs::write(&stamp, &locked.sha256).map_err(io(&stamp))?;
    Ok(dir)
}

/// Copies the files of `spec` from an unpacked package into `root`, keeping relative
/// paths; symlinks stay symlinks. Returns the relative paths copied.
pub fn install_files(
    unpacked: &Path,
    spec: &PackageSpec,
    root: &Path,
) -> Result<Vec<PathBuf>, RootfsError> {
    let mut copied = Vec::new();
    for pattern in &spec.files {
        let full = unpacked.join(pattern);
        let mut matched = false;
        let paths = glob::glob(&full.to_string_lossy()).map_err(|e| RootfsError::Parse {
            path: PathBuf::from(pattern),
            message: e.to_string(),
        })?;
        for entry in paths {
            let src = entry.map_err(|e| RootfsError::Io {
                path: e.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let rel = src.strip_prefix(unpacked).expect("glob is under the root");
            copy_entry(&src, &root.join(rel))?;
            copied.push(rel.to_path_buf());
            matched = true;
        }
        if !matched {
            return Err(RootfsError::NoMatch {
                package: spec.name.clone(),
                pattern: pattern.clone(),
            });
        }
    }
    Ok(copied)
}

/// Copies a file or symlink (not directories), creating parents.
pub fn copy_entry(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    let _ = std::fs::remove_file(dst);
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(io(src))?;
        std::os::unix::fs::symlink(target, dst).map_err(io(dst))?;
    } else {
        std::fs::copy(src, dst).map_err(io(dst))?;
    }
    Ok(())
}

/// Copies a whole directory tree (the overlay) into `root`.
pub fn copy_tree(src: &Path, root: &Path) -> Result<usize, RootfsError> {
    let mut n = 0;
    let entries = crate::reproducible::sorted_tree(src).map_err(|e| RootfsError::Io {
        path: src.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for rel in entries {
        let s = src.join(&rel);
        let d = root.join(&rel);
        let meta = std::fs::symlink_metadata(&s).map_err(io(&s))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        } else {
            copy_entry(&s, &d)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Package name -> unpacked directory, for every package of the lock.
pub type Unpacked = BTreeMap<String, PathBuf>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_names_escape_the_epoch() {
        let l = Locked {
            name: "conntrack".into(),
            version: "1:1.4.7-1+b2".into(),
            arch: "amd64".into(),
            sha256: String::new(),
        };
        assert_eq!(l.deb_name(), "conntrack_1%3a1.4.7-1+b2_amd64.deb");
    }

    #[test]
    fn candidate_from_policy_output() {
        let out = "nftables:\n  Installed: 1.0.6-2+deb12u2\n  Candidate: 1.0.6-2+deb12u2\n";
        assert_eq!(parse_candidate(out).as_deref(), Some("1.0.6-2+deb12u2"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
    }

    #[test]
    fn manifest_rejects_unknown_keys_with_location() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("packages.toml");
        std::fs::write(
            &p,
            "suite = \"bookworm\"\narch = \"amd64\"\nkernel = \"k\"\n[[package]]\nname = \"a\"\nfiles = []\nfile = 1\n",
        )
        .unwrap();
        let e = Manifest::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("packages.toml") && e.contains("line 7") && e.contains("file"),
            "{e}"
        );
    }

    #[test]
    fn lock_resolution_names_missing_packages() {
        let m = Manifest {
            suite: "bookworm".into(),
            arch: "amd64".into(),
            kernel: "linux-image-x".into(),
            packages: vec![PackageSpec {
                name: "nftables".into(),
                files: vec![],
                why: String::new(),
            }],
        };
        let lock = Lock {
            packages: vec![Locked {
                name: "linux-image-x".into(),
                version: "1".into(),
                arch: "amd64".into(),
                sha256: "00".into(),
            }],
        };
        let e = lock
            .resolve(&m, Path::new("rootfs/packages.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("nftables") && e.to_string().contains("image lock"));
        let text = lock.to_toml();
        assert_eq!(Lock::load_str(&text), lock);
    }

    impl Lock {
        fn load_str(s: &str) -> Lock {
            toml::from_str(s).unwrap()
        }
    }

    #[test]
    fn checksum_mismatch_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let l = Locked {
            name: "libmnl0".into(),
            version: "1.0.4-3".into(),
            arch: "amd64".into(),
            sha256: "00".repeat(32),
        };
        std::fs::write(dir.path().join(l.deb_name()), b"not the real deb").unwrap();
        let e = fetch(dir.path(), &l, true).unwrap_err().to_string();
        assert!(e.contains("libmnl0") && e.contains("the lock pins"), "{e}");
    }
}
