//! Signed bundles: one format for config bundles and OS-update bundles.
//!
//! A bundle is one file: a fixed header, a JSON manifest (kind, version, cluster,
//! created, compatible, every payload's name, size and SHA-256), an ed25519 signature
//! over the manifest's exact bytes with the signing key's id, then the payload files
//! and an end marker (see [`format`] and `docs/bundle-format.md`).
//!
//! * [`create()`] / [`create_file`] build and sign bundles (the image area makes
//!   OS-update bundles with them); [`config_meta`] takes version and cluster from a
//!   config.
//! * [`verify()`] (in memory) and [`verify_stream`] (any `Read`, for large OS updates)
//!   check a bundle against a [`Policy`] and name the first reason it fails
//!   ([`VerifyError`]).
//! * [`StagingSink`] stages payloads on disk during verification and commits them only
//!   after the bundle was accepted.
//! * [`keys`] generates and reads signing, public and sync keys; [`fsio`] writes files
//!   atomically with restrictive modes.

pub mod config_check;
pub mod create;
pub mod format;
pub mod fsio;
pub mod keys;
pub mod manifest;
pub mod stage;
pub mod verify;

#[cfg(test)]
mod tests;

pub use create::{
    BundleMeta, CreateError, Payload, PayloadSource, build_manifest, config_meta, create,
    create_file, created_from, created_now, write_bundle,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use keys::{KeyError, KeyId, SyncKey};
pub use manifest::{DEFAULT_COMPATIBLE, Kind, Manifest, ManifestError, PayloadEntry};
pub use stage::StagingSink;
pub use verify::{
    CONFIG_PAYLOAD, DiscardSink, MemorySink, PayloadSink, Policy, VerifiedBundle, VerifyError,
    verify, verify_stream,
};
