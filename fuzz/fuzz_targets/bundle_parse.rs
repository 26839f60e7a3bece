//! Fuzzes the bundle container and manifest parsers and the whole verifier. It trusts a
//! fixed test key (the ed25519 seed of 32 bytes 0x42) with which `scripts/fuzz.sh` signs
//! the seed bundles, so mutations of the payload framing get past the signature check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinwall_bundle::{Manifest, Policy, SigningKey, verify};

fuzz_target!(|data: &[u8]| {
    // The manifest parser on its own, without the signature in front of it.
    let _ = Manifest::parse(data);
    let policy = Policy {
        trusted: vec![SigningKey::from_bytes(&[0x42; 32]).verifying_key()],
        installed_version: Some(0),
        ..Policy::default()
    };
    if let Ok(v) = verify(data, &policy) {
        // Anything accepted is internally consistent.
        assert_eq!(v.payloads.len(), v.manifest.payloads.len());
        for (p, e) in v.payloads.iter().zip(&v.manifest.payloads) {
            assert_eq!(p.len() as u64, e.size);
        }
    }
});
