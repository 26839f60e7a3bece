//! The container: byte layout constants and the writer for the framing.
//!
//! ```text
//! header     "TWBUNDLE" | u16 container version (1) | u16 flags (0) | u32 manifest length M
//! manifest   M bytes of JSON, exactly as signed
//! signature  "SIGN" | 8-byte key id | 64-byte ed25519 signature over the manifest bytes
//! payload*   "FILE" | u16 name length L | L bytes name | u64 size S | S bytes data
//! end        "END\0", then end of file
//! ```
//! All integers are big-endian. The reader lives in [`crate::verify`]; see
//! `docs/bundle-format.md` for the reasoning.

use std::io::{self, Write};

/// Magic at byte 0.
pub const MAGIC: [u8; 8] = *b"TWBUNDLE";
/// Container version this build writes and reads.
pub const CONTAINER_VERSION: u16 = 1;
/// Length of the fixed header before the manifest.
pub const HEADER_LEN: usize = 16;
/// Largest manifest accepted (1 MiB); checked before anything is allocated for it.
pub const MAX_MANIFEST_LEN: u32 = 1 << 20;
/// Tag of the signature section.
pub const TAG_SIGNATURE: [u8; 4] = *b"SIGN";
/// Tag of a payload section.
pub const TAG_FILE: [u8; 4] = *b"FILE";
/// Tag of the end marker.
pub const TAG_END: [u8; 4] = *b"END\0";
/// Length of the signature section (tag, key id, signature).
pub const SIGNATURE_SECTION_LEN: usize = 4 + 8 + 64;

/// Writes the header, the manifest and the signature section.
pub fn write_head<W: Write>(
    out: &mut W,
    manifest: &[u8],
    key_id: &[u8; 8],
    signature: &[u8; 64],
) -> io::Result<()> {
    let len = u32::try_from(manifest.len())
        .ok()
        .filter(|l| *l <= MAX_MANIFEST_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "manifest too large"))?;
    out.write_all(&MAGIC)?;
    out.write_all(&CONTAINER_VERSION.to_be_bytes())?;
    out.write_all(&0u16.to_be_bytes())?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(manifest)?;
    out.write_all(&TAG_SIGNATURE)?;
    out.write_all(key_id)?;
    out.write_all(signature)
}

/// Writes a payload section's header; the caller writes exactly `size` bytes after it.
pub fn write_file_header<W: Write>(out: &mut W, name: &str, size: u64) -> io::Result<()> {
    let len = u16::try_from(name.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload name too long"))?;
    out.write_all(&TAG_FILE)?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&size.to_be_bytes())
}

/// Writes the end marker.
pub fn write_end<W: Write>(out: &mut W) -> io::Result<()> {
    out.write_all(&TAG_END)
}
