//! The OS update bundle: the slot squashfs signed in the bundle area's format verifies
//! against the signer's public key, carries the slot byte for byte, is reproducible, and
//! is rejected under another key.

use twinwall_bundle::{Kind, Policy, keys};
use twinwall_image::build::{UPDATE_PAYLOAD, update_bundle};
use twinwall_image::reproducible;

#[test]
fn update_bundle_verifies_and_carries_the_slot() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), vec![9u8; 50_000]).unwrap();
    let slot = d.path().join("slot.squashfs");
    reproducible::squashfs(&root, &slot, 1_767_225_600).unwrap();
    let key = keys::generate_signing_key().unwrap();
    let (b1, b2) = (d.path().join("1.bundle"), d.path().join("2.bundle"));
    update_bundle(&slot, &key, 7, 1_767_225_600, &b1).unwrap();
    update_bundle(&slot, &key, 7, 1_767_225_600, &b2).unwrap();
    let bytes = std::fs::read(&b1).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&b2).unwrap(),
        "same inputs, same bundle"
    );

    let policy = Policy {
        trusted: vec![key.verifying_key()],
        installed_version: Some(6),
        kind: Some(Kind::OsUpdate),
        ..Policy::default()
    };
    let v = twinwall_bundle::verify(&bytes, &policy).unwrap();
    assert_eq!(v.manifest.version, 7);
    assert_eq!(
        v.payload(UPDATE_PAYLOAD).unwrap(),
        std::fs::read(&slot).unwrap()
    );

    let other = keys::generate_signing_key().unwrap();
    let wrong = Policy {
        trusted: vec![other.verifying_key()],
        ..Policy::default()
    };
    assert!(twinwall_bundle::verify(&bytes, &wrong).is_err());
    let old = Policy {
        installed_version: Some(7),
        ..policy
    };
    assert!(
        twinwall_bundle::verify(&bytes, &old).is_err(),
        "anti-rollback"
    );
}
