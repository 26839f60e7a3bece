//! The errors of the management API and the HTTP status each maps to: a bad bundle is a
//! 4xx whose body names the reason (`{"error": "...", "code": "..."}`), a failure on the
//! node a 5xx.

use twinwall_bundle::VerifyError;

use crate::apply::ApplyError;
use crate::store::StoreError;
use crate::update::UpdateError;

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The bundle was rejected by verification.
    #[error("bundle rejected: {0}")]
    Rejected(#[from] VerifyError),
    /// The config cannot run on this node (it does not compile for it); nothing changed.
    #[error("config rejected: {0}")]
    Invalid(ApplyError),
    /// Applying failed after the config was installed; the previous config was restored.
    #[error("apply failed, previous config restored: {0}")]
    ApplyFailed(ApplyError),
    /// The config partition could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS update failed.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The peer refused phase 1 or 2 of a push; nothing changed here.
    #[error("peer {peer} refused the bundle ({status}): {message}")]
    Peer {
        /// Peer address.
        peer: String,
        /// HTTP status it answered.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// The request does not fit the node's state (no window open, another version ...).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body exceeds the limit of the endpoint.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Not possible in the node's mode (fail-closed, no slots).
    #[error("{0}")]
    Unavailable(String),
}

impl MgmtError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            MgmtError::Rejected(e) => verify_status(e),
            MgmtError::Update(UpdateError::Rejected(e)) => verify_status(e),
            MgmtError::Update(UpdateError::NoSlots(_)) => 409,
            MgmtError::Update(_) => 500,
            MgmtError::Invalid(_) => 422,
            MgmtError::ApplyFailed(_) | MgmtError::Store(_) => 500,
            MgmtError::Peer { .. } | MgmtError::Conflict(_) => 409,
            MgmtError::BadRequest(_) => 400,
            MgmtError::TooLarge { .. } => 413,
            MgmtError::Unavailable(_) => 503,
        }
    }

    /// A short machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            MgmtError::Rejected(e) | MgmtError::Update(UpdateError::Rejected(e)) => e.code(),
            MgmtError::Update(UpdateError::ReadBack { .. }) => "read_back_mismatch",
            MgmtError::Update(UpdateError::NoSlots(_)) => "no_slots",
            MgmtError::Update(_) => "update_failed",
            MgmtError::Invalid(_) => "config_not_applicable",
            MgmtError::ApplyFailed(_) => "apply_failed",
            MgmtError::Store(_) => "config_partition",
            MgmtError::Peer { .. } => "peer_rejected",
            MgmtError::Conflict(_) => "conflict",
            MgmtError::BadRequest(_) => "bad_request",
            MgmtError::TooLarge { .. } => "too_large",
            MgmtError::Unavailable(_) => "unavailable",
        }
    }
}

fn verify_status(e: &VerifyError) -> u16 {
    match e.code() {
        "unknown_key" | "bad_signature" | "no_trusted_keys" | "missing_signature" => 403,
        "not_newer" | "rollback_not_permitted" => 409,
        "wrong_kind" | "incompatible" | "config_invalid" | "config_mismatch" | "config_payload" => {
            422
        }
        // A sink failure during an update is the slot refusing the payload (too big, not
        // a slot image).
        "sink_error" => 422,
        _ => 400,
    }
}
