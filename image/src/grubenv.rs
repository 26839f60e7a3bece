//! The GRUB environment block (`grubenv`): parsing and writing the exact 1024-byte format
//! that GRUB's `load_env`/`save_env` and `grub-editenv` use.
//!
//! Format (grub-core/lib/envblk.c): the signature line `# GRUB Environment Block\n`, then
//! `key=value\n` entries where `\` and newline inside a value are escaped with a backslash,
//! lines starting with `#` are comments, and the rest of the block is `#` padding. GRUB's
//! `save_env` rewrites the block in place, so it must stay exactly [`BLOCK_SIZE`] bytes.
//! Written by hand because no maintained crate implements this format; it is tiny.

use thiserror::Error;

/// Size of a grubenv block in bytes.
pub const BLOCK_SIZE: usize = 1024;
/// The signature line that starts every block.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";

/// What is wrong with a grubenv block.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrubenvError {
    /// The block is not exactly 1024 bytes.
    #[error("grubenv block is {len} bytes, expected exactly {BLOCK_SIZE}")]
    Size {
        /// Actual length.
        len: usize,
    },
    /// The block does not start with the signature line.
    #[error("grubenv block does not start with the signature line {SIGNATURE:?}")]
    Signature,
    /// An entry line without `=`.
    #[error("grubenv entry at byte {offset} has no '=': {line:?}")]
    NoEquals {
        /// Byte offset of the line in the block.
        offset: usize,
        /// The offending line.
        line: String,
    },
    /// An entry whose key is empty.
    #[error("grubenv entry at byte {offset} has an empty key")]
    EmptyKey {
        /// Byte offset of the line in the block.
        offset: usize,
    },
    /// An entry that runs to the end of the block without a terminating newline.
    #[error("grubenv entry at byte {offset} is not terminated by a newline")]
    Unterminated {
        /// Byte offset of the entry.
        offset: usize,
    },
    /// Bytes that are not UTF-8 in a key or value.
    #[error("grubenv entry at byte {offset} is not valid UTF-8")]
    Utf8 {
        /// Byte offset of the entry.
        offset: usize,
    },
    /// A NUL byte in the block (GRUB would stop there; we refuse it).
    #[error("grubenv block contains a NUL byte at {offset}")]
    Nul {
        /// Byte offset.
        offset: usize,
    },
    /// A key that GRUB cannot represent (empty, or containing `=`, newline, `#` first).
    #[error(
        "invalid grubenv key {key:?}: keys must be non-empty, must not contain '=' or newlines and must not start with '#'"
    )]
    BadKey {
        /// The key.
        key: String,
    },
    /// The entries do not fit into 1024 bytes.
    #[error("grubenv entries need {needed} bytes, more than the {BLOCK_SIZE}-byte block")]
    TooLarge {
        /// Bytes needed.
        needed: usize,
    },
}

/// A parsed grubenv: the entries in block order (GRUB keeps insertion order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grubenv {
    entries: Vec<(String, String)>,
}

impl Grubenv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a block; anything that is not exactly the GRUB format is rejected.
    pub fn parse(block: &[u8]) -> Result<Self, GrubenvError> {
        if block.len() != BLOCK_SIZE {
            return Err(GrubenvError::Size { len: block.len() });
        }
        if !block.starts_with(SIGNATURE.as_bytes()) {
            return Err(GrubenvError::Signature);
        }
        if let Some(offset) = block.iter().position(|&b| b == 0) {
            return Err(GrubenvError::Nul { offset });
        }
        let mut entries = Vec::new();
        let mut p = SIGNATURE.len();
        while p < block.len() {
            if block[p] == b'#' {
                // A comment or the padding: skip to the end of the line.
                match block[p..].iter().position(|&b| b == b'\n') {
                    Some(n) => p += n + 1,
                    None => break,
                }
                continue;
            }
            let start = p;
            let mut raw = Vec::new();
            let mut terminated = false;
            while p < block.len() {
                match block[p] {
                    b'\\' if p + 1 < block.len() => {
                        raw.push(block[p + 1]);
                        p += 2;
                    }
                    b'\n' => {
                        p += 1;
                        terminated = true;
                        break;
                    }
                    b => {
                        raw.push(b);
                        p += 1;
                    }
                }
            }
            if !terminated {
                return Err(GrubenvError::Unterminated { offset: start });
            }
            // The first '=' in the raw line separates key and value (keys cannot be escaped
            // in a way that hides an '=', GRUB itself splits on the first one).
            let eq = block[start..p]
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| GrubenvError::NoEquals {
                    offset: start,
                    line: String::from_utf8_lossy(&block[start..p - 1]).into_owned(),
                })?;
            if eq == 0 {
                return Err(GrubenvError::EmptyKey { offset: start });
            }
            let key = std::str::from_utf8(&block[start..start + eq])
                .map_err(|_| GrubenvError::Utf8 { offset: start })?
                .to_owned();
            let value = String::from_utf8(raw[key.len() + 1..].to_vec())
                .map_err(|_| GrubenvError::Utf8 { offset: start })?;
            entries.push((key, value));
        }
        Ok(Self { entries })
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (in place if it exists, appended otherwise).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), GrubenvError> {
        if key.is_empty() || key.contains(['=', '\n', '\\']) || key.starts_with('#') {
            return Err(GrubenvError::BadKey { key: key.into() });
        }
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_owned(),
            None => self.entries.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was set.
    pub fn unset(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        before != self.entries.len()
    }

    /// All entries in block order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Serialises to exactly [`BLOCK_SIZE`] bytes.
    pub fn to_block(&self) -> Result<Vec<u8>, GrubenvError> {
        let mut out = Vec::with_capacity(BLOCK_SIZE);
        out.extend_from_slice(SIGNATURE.as_bytes());
        for (k, v) in &self.entries {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            for &b in v.as_bytes() {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > BLOCK_SIZE {
            return Err(GrubenvError::TooLarge { needed: out.len() });
        }
        out.resize(BLOCK_SIZE, b'#');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(body: &str) -> Vec<u8> {
        let mut b = format!("{SIGNATURE}{body}").into_bytes();
        b.resize(BLOCK_SIZE, b'#');
        b
    }

    #[test]
    fn round_trip_with_escapes() {
        let mut env = Grubenv::new();
        env.set("ORDER", "A B").unwrap();
        env.set("X", "back\\slash\nnewline").unwrap();
        let b = env.to_block().unwrap();
        assert_eq!(b.len(), BLOCK_SIZE);
        assert!(
            b.starts_with(b"# GRUB Environment Block\nORDER=A B\nX=back\\\\slash\\\nnewline\n#")
        );
        assert_eq!(Grubenv::parse(&b).unwrap(), env);
    }

    #[test]
    fn empty_block_is_header_and_padding() {
        let b = Grubenv::new().to_block().unwrap();
        assert_eq!(&b[..SIGNATURE.len()], SIGNATURE.as_bytes());
        assert!(b[SIGNATURE.len()..].iter().all(|&c| c == b'#'));
        assert_eq!(Grubenv::parse(&b).unwrap().entries().count(), 0);
    }

    #[test]
    fn comments_are_skipped_and_set_keeps_order() {
        let mut env = Grubenv::parse(&block("# WARNING: hands off\nB=1\nA=2\n")).unwrap();
        env.set("B", "3").unwrap();
        env.set("C", "4").unwrap();
        let keys: Vec<_> = env.entries().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(keys, ["B=3", "A=2", "C=4"]);
        assert!(env.unset("A"));
        assert!(!env.unset("A"));
        assert_eq!(env.get("A"), None);
    }

    #[test]
    fn value_may_contain_equals() {
        let env = Grubenv::parse(&block("k=a=b\n")).unwrap();
        assert_eq!(env.get("k"), Some("a=b"));
    }

    #[test]
    fn rejects_malformed_blocks() {
        assert_eq!(
            Grubenv::parse(&[b'#'; 1023]),
            Err(GrubenvError::Size { len: 1023 })
        );
        assert_eq!(
            Grubenv::parse(&vec![b'#'; 1024]),
            Err(GrubenvError::Signature)
        );
        assert!(matches!(
            Grubenv::parse(&block("novalue\n")),
            Err(GrubenvError::NoEquals { offset: 25, .. })
        ));
        assert!(matches!(
            Grubenv::parse(&block("=v\n")),
            Err(GrubenvError::EmptyKey { .. })
        ));
        // An entry that swallows the padding: no newline before the end of the block.
        assert!(matches!(
            Grubenv::parse(&block("x=1\nk=v")),
            Err(GrubenvError::Unterminated { offset: 29 })
        ));
        let mut nul = block("k=v\n");
        nul[SIGNATURE.len() + 2] = 0;
        assert!(matches!(
            Grubenv::parse(&nul),
            Err(GrubenvError::Nul { .. })
        ));
    }

    #[test]
    fn rejects_bad_keys_and_overflow() {
        let mut env = Grubenv::new();
        for k in ["", "a=b", "a\nb", "#x"] {
            assert!(
                matches!(env.set(k, "v"), Err(GrubenvError::BadKey { .. })),
                "{k:?}"
            );
        }
        env.set("big", &"x".repeat(1000)).unwrap();
        assert!(matches!(env.to_block(), Err(GrubenvError::TooLarge { .. })));
    }
}
