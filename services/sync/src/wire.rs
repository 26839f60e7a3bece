//! The sync protocol on the wire: message types, the datagram format (postcard body,
//! HMAC-SHA256 trailer under the cluster sync key), the key file, and replay protection.
//!
//! Datagram: `"TWS1" | postcard(Datagram) | HMAC-SHA256(key, everything before)`.
//! Every datagram carries the sender's session epoch (its start time in ns, fresh at every
//! start) and a per-datagram counter that never repeats within an epoch; the receiver
//! rejects older epochs and counters it has already seen (64-wide sliding window).

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::entry::{Digest, Entry, Key};

/// Where the sync key lives on the appliance (the config partition).
pub const DEFAULT_KEY_PATH: &str = "/config/sync.key";
/// The largest datagram we send (fits a 1500-byte MTU with IPv6 and UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
const MAGIC: &[u8; 4] = b"TWS1";
const MAC_LEN: usize = 32;

/// One replicated change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Create or refresh an entry.
    Upsert(Entry),
    /// The entry is gone.
    Remove(Key),
    /// A full resync starts: the receiver marks its external cache stale.
    ResyncBegin,
    /// The full resync is complete: stale entries are dropped.
    ResyncEnd,
    /// The digest of the sender's table at this point of the stream.
    Digest(Digest),
}

/// The body of a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Keepalive; `want_resync` asks the master for a full resync.
    Hello {
        /// The sender wants a full resync newer than this stream (the last one it saw,
        /// 0 for none).
        want_resync: Option<u32>,
    },
    /// Reliable, ordered updates: `seq` within `stream`.
    Data {
        /// Stream id; a new one starts with every full resync.
        stream: u32,
        /// Sequence number (1, 2, ... within a stream).
        seq: u32,
        /// The updates, applied in order.
        updates: Vec<Update>,
    },
    /// Cumulative ack: everything up to `upto` of `stream` was applied.
    Ack {
        /// Stream id.
        stream: u32,
        /// Highest sequence number received in order.
        upto: u32,
    },
    /// Gap: `from..=to` is missing.
    Nack {
        /// Stream id.
        stream: u32,
        /// First missing sequence number.
        from: u32,
        /// Last missing sequence number.
        to: u32,
    },
}

/// A datagram before authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// Sender session epoch.
    pub epoch: u64,
    /// Per-datagram counter within the epoch.
    pub counter: u64,
    /// The message.
    pub body: Body,
}

/// Errors of the wire layer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The key file cannot be read.
    #[error("sync key {path}: {source}")]
    KeyRead {
        /// Key file.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a 32-byte key.
    #[error(
        "sync key {path}: expected 32 bytes as 64 hex characters, base64 or raw bytes, found {found}"
    )]
    KeyFormat {
        /// Key file.
        path: String,
        /// What was found instead.
        found: String,
    },
    /// Too short or wrong magic.
    #[error("not a twinwall sync datagram ({len} bytes)")]
    NotOurs {
        /// Datagram length.
        len: usize,
    },
    /// The MAC does not verify.
    #[error("bad MAC")]
    BadMac,
    /// The body does not decode.
    #[error("undecodable body: {0}")]
    Body(postcard::Error),
    /// Already seen or from an older session.
    #[error("replayed datagram (epoch {epoch}, counter {counter})")]
    Replay {
        /// Epoch of the datagram.
        epoch: u64,
        /// Counter of the datagram.
        counter: u64,
    },
}

/// The 32-byte cluster sync key.
#[derive(Clone)]
pub struct SyncKey([u8; 32]);

/// The header of the sync key file format written by `twinwall key sync` and `twinwall
/// flash` (the bundle crate's `keys::SYNC_HEADER`; the sync service does not depend on
/// the bundle crate).
const SYNC_KEY_HEADER: &str = "twinwall-sync-key-v1";

impl std::fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncKey(..)")
    }
}

impl SyncKey {
    /// A key from raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> SyncKey {
        SyncKey(b)
    }

    /// Parses a key file's content: the key file format of `twinwall key sync` and
    /// `twinwall flash` (`twinwall-sync-key-v1 <base64>`, see `twinwall_bundle::keys`),
    /// 64 hex characters, base64 (standard, with or without padding) of 32 bytes, or
    /// exactly 32 raw bytes. Surrounding whitespace is ignored.
    pub fn parse(content: &[u8], path: &str) -> Result<SyncKey, WireError> {
        use base64::Engine;
        let text = std::str::from_utf8(content).ok().map(|t| {
            let t = t.trim();
            t.strip_prefix(SYNC_KEY_HEADER)
                .map_or(t, |rest| rest.trim_start())
        });
        if let Some(t) = text {
            if t.len() == 64
                && let Ok(v) = hex::decode(t)
            {
                return Ok(SyncKey(v.try_into().expect("64 hex chars are 32 bytes")));
            }
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
            ] {
                if let Ok(v) = engine.decode(t)
                    && let Ok(k) = <[u8; 32]>::try_from(v)
                {
                    return Ok(SyncKey(k));
                }
            }
        }
        if let Ok(k) = <[u8; 32]>::try_from(content) {
            return Ok(SyncKey(k));
        }
        Err(WireError::KeyFormat {
            path: path.to_string(),
            found: match text {
                Some(t) => format!("{} characters of text", t.len()),
                None => format!("{} bytes of binary", content.len()),
            },
        })
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<SyncKey, WireError> {
        let p = path.display().to_string();
        let content = std::fs::read(path).map_err(|source| WireError::KeyRead {
            path: p.clone(),
            source,
        })?;
        SyncKey::parse(&content, &p)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// Encodes and authenticates a datagram.
pub fn seal(key: &SyncKey, d: &Datagram) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out = postcard::to_extend(d, out).expect("serialising into a Vec cannot fail");
    let mut mac = key.mac();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// Verifies and decodes a datagram (replay is checked separately, by [`ReplayWindow`]).
pub fn open(key: &SyncKey, bytes: &[u8]) -> Result<Datagram, WireError> {
    if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..4] != MAGIC {
        return Err(WireError::NotOurs { len: bytes.len() });
    }
    let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut mac = key.mac();
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| WireError::BadMac)?;
    postcard::from_bytes(&signed[4..]).map_err(WireError::Body)
}

/// The size a datagram will have on the wire.
pub fn sealed_len(d: &Datagram) -> usize {
    MAGIC.len() + postcard::experimental::serialized_size(d).expect("serialisable") + MAC_LEN
}

/// Replay protection for one peer: the newest epoch seen and a 64-wide window of counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayWindow {
    epoch: u64,
    top: u64,
    bits: u64,
}

/// What [`ReplayWindow::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Accepted, same session as before.
    Same,
    /// Accepted, and the peer started a new session (it restarted).
    NewSession,
}

impl ReplayWindow {
    /// Accepts `(epoch, counter)` once; an older epoch, a counter already seen, or one more
    /// than 64 behind the newest is a replay.
    pub fn check(&mut self, epoch: u64, counter: u64) -> Result<Fresh, WireError> {
        let replay = Err(WireError::Replay { epoch, counter });
        if epoch < self.epoch {
            return replay;
        }
        if epoch > self.epoch {
            let first = self.epoch == 0;
            *self = ReplayWindow {
                epoch,
                top: counter,
                bits: 1,
            };
            return Ok(if first {
                Fresh::Same
            } else {
                Fresh::NewSession
            });
        }
        if counter > self.top {
            let shift = counter - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = counter;
            return Ok(Fresh::Same);
        }
        let back = self.top - counter;
        if back >= 64 || self.bits & (1 << back) != 0 {
            return replay;
        }
        self.bits |= 1 << back;
        Ok(Fresh::Same)
    }

    /// The peer's current epoch (0 before the first datagram).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::tcp;

    fn key() -> SyncKey {
        SyncKey::from_bytes([7; 32])
    }

    #[test]
    fn sealed_datagrams_open_and_tampering_is_a_bad_mac() {
        let d = Datagram {
            epoch: 5,
            counter: 9,
            body: Body::Data {
                stream: 1,
                seq: 1,
                updates: vec![Update::Upsert(tcp(1, true)), Update::ResyncEnd],
            },
        };
        let b = seal(&key(), &d);
        assert_eq!(b.len(), sealed_len(&d));
        assert_eq!(open(&key(), &b).unwrap(), d);
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(open(&key(), &t).is_err(), "flip at {i} accepted");
        }
        let other = SyncKey::from_bytes([8; 32]);
        assert!(matches!(open(&other, &b), Err(WireError::BadMac)));
        assert!(matches!(
            open(&key(), b"TWS1"),
            Err(WireError::NotOurs { .. })
        ));
    }

    #[test]
    fn an_entry_costs_few_bytes_on_the_wire() {
        let len = |n: u16| {
            sealed_len(&Datagram {
                epoch: u64::MAX,
                counter: u64::MAX,
                body: Body::Data {
                    stream: u32::MAX,
                    seq: u32::MAX,
                    updates: (0..n)
                        .map(|i| Update::Upsert(tcp(40000 + i, true)))
                        .collect(),
                },
            })
        };
        // A TCP entry with NAT and window-tracking state, marginal cost:
        let per_entry = len(21) - len(20);
        assert!(per_entry <= 50, "{per_entry} bytes per entry");
        assert!(
            len(25) <= MAX_DATAGRAM,
            "25 entries do not fit one datagram"
        );
    }

    #[test]
    fn key_files_in_hex_base64_or_raw_are_accepted() {
        let raw = [0xabu8; 32];
        let hex = hex::encode(raw);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for content in [
            hex.as_bytes().to_vec(),
            format!("{hex}\n").into_bytes(),
            b64.as_bytes().to_vec(),
            b64.trim_end_matches('=').as_bytes().to_vec(),
            format!("twinwall-sync-key-v1 {b64}\n").into_bytes(),
            raw.to_vec(),
        ] {
            let k = SyncKey::parse(&content, "k").unwrap();
            assert_eq!(k.0, raw);
        }
        let e = SyncKey::parse(b"abc\n", "/config/sync.key").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sync key /config/sync.key: expected 32 bytes as 64 hex characters, base64 or raw \
             bytes, found 3 characters of text"
        );
    }

    #[test]
    fn replays_and_old_sessions_are_refused() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(10, 1).unwrap(), Fresh::Same);
        assert!(w.check(10, 1).is_err());
        w.check(10, 3).unwrap();
        w.check(10, 2).unwrap(); // reordered, not seen: fine
        assert!(w.check(10, 2).is_err());
        w.check(10, 200).unwrap();
        assert!(w.check(10, 100).is_err(), "too far behind");
        assert!(w.check(9, 1000).is_err(), "older session");
        assert_eq!(w.check(11, 1).unwrap(), Fresh::NewSession);
        assert!(w.check(10, 500).is_err());
    }
}
