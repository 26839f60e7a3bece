//! Behaviour of the bundle format: round trips, tamper and corruption rejection with the
//! right reason, anti-rollback, key files and atomic writes.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

use crate::format;
use crate::fsio;
use crate::keys::{self, KeyId};
use crate::manifest::ManifestError;
use crate::*;

/// A small config that validates: the sample for the exhaustive flip and truncation loops.
const CONFIG: &str = r#"[cluster]
name = "lab"
version = 5

[nodes.a]
priority = 200
interfaces.lan = { device = "eth0", address = "198.51.100.2/24" }

[nodes.b]
priority = 100
interfaces.lan = { device = "eth0", address = "198.51.100.3/24" }

[[vrrp.group]]
name = "g"

[[vrrp.group.vip]]
vrid = 1
interface = "lan"
address = "198.51.100.1/24"

[policy]
default = "drop"
"#;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn meta(version: u64) -> BundleMeta {
    BundleMeta {
        version,
        cluster: "lab".into(),
        compatible: DEFAULT_COMPATIBLE.into(),
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        rollback: false,
    }
}

fn policy(trusted: &[&SigningKey]) -> Policy {
    Policy {
        trusted: trusted.iter().map(|k| k.verifying_key()).collect(),
        ..Policy::default()
    }
}

fn config_bundle() -> Vec<u8> {
    create(
        Kind::Config,
        &meta(5),
        &[Payload::bytes(CONFIG_PAYLOAD, CONFIG)],
        &key(1),
    )
    .expect("create")
}

/// Two payloads, for order, swap, extra and missing cases.
fn update_bundle(m: &BundleMeta) -> Vec<u8> {
    create(
        Kind::OsUpdate,
        m,
        &[
            Payload::bytes("rootfs.img", b"AAAAAAAAAAAAAAAA".to_vec()),
            Payload::bytes("version.txt", b"twinwall 1.2.3\n".to_vec()),
        ],
        &key(1),
    )
    .expect("create")
}

/// Builds a container by hand: manifest bytes signed by `signer`, then the given
/// sections. Lets tests make bundles the creator refuses to make.
fn assemble(manifest: &[u8], signer: &SigningKey, sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let sig = signer.sign(manifest).to_bytes();
    format::write_head(
        &mut out,
        manifest,
        &KeyId::of(&signer.verifying_key()).0,
        &sig,
    )
    .unwrap();
    for (name, data) in sections {
        format::write_file_header(&mut out, name, data.len() as u64).unwrap();
        out.extend_from_slice(data);
    }
    format::write_end(&mut out).unwrap();
    out
}

/// Byte ranges of the sections of a bundle: (head_end, [(start, end)] per file, end tag).
fn layout(b: &[u8]) -> (usize, Vec<(usize, usize)>, usize) {
    let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    let head_end = 16 + mlen + format::SIGNATURE_SECTION_LEN;
    let mut files = Vec::new();
    let mut at = head_end;
    while b[at..at + 4] == format::TAG_FILE {
        let nl = u16::from_be_bytes(b[at + 4..at + 6].try_into().unwrap()) as usize;
        let size_at = at + 6 + nl;
        let size = u64::from_be_bytes(b[size_at..size_at + 8].try_into().unwrap()) as usize;
        let end = size_at + 8 + size;
        files.push((at, end));
        at = end;
    }
    (head_end, files, at)
}

fn err(b: &[u8], p: &Policy) -> VerifyError {
    verify(b, p).expect_err("bundle must be rejected")
}

#[test]
fn config_bundle_round_trip() {
    let b = config_bundle();
    let v = verify(&b, &policy(&[&key(1)])).expect("verify");
    assert_eq!(v.manifest.kind, Kind::Config);
    assert_eq!(v.manifest.version, 5);
    assert_eq!(v.manifest.cluster, "lab");
    assert_eq!(v.manifest.created, "2023-11-14T22:13:20Z");
    assert_eq!(v.key_id, KeyId::of(&key(1).verifying_key()));
    assert_eq!(v.config.as_deref(), Some(CONFIG));
    assert_eq!(v.payload(CONFIG_PAYLOAD), Some(CONFIG.as_bytes()));
    // The signed bytes are exactly the manifest bytes in the container.
    assert_eq!(
        &b[16..16 + v.manifest_bytes.len()],
        v.manifest_bytes.as_slice()
    );
    // Same inputs, same bytes: creation is deterministic (ed25519 is too).
    assert_eq!(b, config_bundle());
}

/// A sink that hashes what it receives and records the call sequence.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    hash: Vec<Sha256>,
}

impl PayloadSink for Recorder {
    fn begin(&mut self, e: &PayloadEntry) -> io::Result<()> {
        self.calls.push(format!("begin {}", e.name));
        self.hash.push(Sha256::new());
        Ok(())
    }
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hash.last_mut().unwrap().update(chunk);
        Ok(())
    }
    fn end(&mut self, e: &PayloadEntry) -> io::Result<()> {
        self.calls.push(format!("end {}", e.name));
        Ok(())
    }
}

/// A reader that hands out at most 7 bytes per call, to prove framing does not depend
/// on read sizes.
struct Dribble<R>(R);
impl<R: Read> Read for Dribble<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(7);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn os_update_from_files_streams_through_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rootfs.img");
    // 3 MiB + 5 bytes: several chunks and a partial one.
    let data: Vec<u8> = (0..(3 << 20) + 5u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    fs::write(&img, &data).unwrap();
    let out = dir.path().join("update.bundle");
    let m = create_file(
        Kind::OsUpdate,
        &meta(9),
        &[
            Payload::file("rootfs.img", &img),
            Payload::bytes("notes.txt", b"hello".to_vec()),
        ],
        &key(1),
        &out,
    )
    .unwrap();
    assert_eq!(m.payloads[0].size, data.len() as u64);
    let mut p = policy(&[&key(1)]);
    p.kind = Some(Kind::OsUpdate);
    p.installed_version = Some(8);
    p.compatible = Some(DEFAULT_COMPATIBLE.into());
    let mut sink = Recorder::default();
    let f = fs::File::open(&out).unwrap();
    let v = verify_stream(Dribble(f), &p, &mut sink).unwrap();
    assert_eq!(v.manifest, m);
    assert!(
        v.payloads.is_empty(),
        "stream verify leaves payloads to the sink"
    );
    assert_eq!(
        sink.calls,
        [
            "begin rootfs.img",
            "end rootfs.img",
            "begin notes.txt",
            "end notes.txt"
        ]
    );
    let got = hex::encode(sink.hash.remove(0).finalize());
    assert_eq!(got, hex::encode(Sha256::digest(&data)));
    // No temporary file is left beside the bundle.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn every_single_byte_flip_is_rejected() {
    let b = config_bundle();
    let p = policy(&[&key(1)]);
    assert!(verify(&b, &p).is_ok());
    let mut seen = std::collections::BTreeSet::new();
    for pos in 0..b.len() {
        for mask in [0x01u8, 0xff, 0x80] {
            let mut c = b.clone();
            c[pos] ^= mask;
            match verify(&c, &p) {
                Ok(_) => panic!("flip {mask:#04x} at byte {pos} of {} accepted", b.len()),
                Err(e) => seen.insert(e.code()),
            };
        }
    }
    // The flips land in every part of the bundle, so many distinct reasons show up.
    for code in [
        "bad_magic",
        "unsupported_container",
        "reserved_flags",
        "manifest_length",
        "bad_signature",
        "unknown_key",
        "missing_signature",
        "malformed",
        "extra_file",
        "size_mismatch",
        "hash_mismatch",
    ] {
        assert!(seen.contains(code), "no flip gave {code}; saw {seen:?}");
    }
}

#[test]
fn truncation_at_every_length_is_rejected() {
    let b = config_bundle();
    let p = policy(&[&key(1)]);
    for len in 0..b.len() {
        match verify(&b[..len], &p) {
            Err(VerifyError::Truncated { offset, .. }) => assert_eq!(offset, len as u64),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
}

#[test]
fn trailing_data_is_rejected() {
    let mut b = config_bundle();
    let end = b.len() as u64;
    b.push(0);
    assert!(matches!(
        err(&b, &policy(&[&key(1)])),
        VerifyError::TrailingData { offset } if offset == end
    ));
}

#[test]
fn untrusted_key_is_unknown_key() {
    let b = config_bundle();
    let e = err(&b, &policy(&[&key(2), &key(3)]));
    match &e {
        VerifyError::UnknownKey { key_id, trusted } => {
            assert_eq!(*key_id, KeyId::of(&key(1).verifying_key()));
            assert!(trusted.contains(&KeyId::of(&key(2).verifying_key()).to_string()));
        }
        other => panic!("{other:?}"),
    }
    // With the right key among others it verifies.
    assert!(verify(&b, &policy(&[&key(2), &key(1)])).is_ok());
    assert!(matches!(
        err(&b, &Policy::default()),
        VerifyError::NoTrustedKeys
    ));
}

#[test]
fn signature_by_another_key_under_a_trusted_id_is_bad_signature() {
    let b = config_bundle();
    let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    let manifest = &b[16..16 + mlen];
    // Keep key(1)'s id but put key(2)'s signature over the same manifest.
    let mut c = b.clone();
    let sig_at = 16 + mlen + 4 + 8;
    c[sig_at..sig_at + 64].copy_from_slice(&key(2).sign(manifest).to_bytes());
    assert!(matches!(
        err(&c, &policy(&[&key(1)])),
        VerifyError::BadSignature { key_id } if key_id == KeyId::of(&key(1).verifying_key())
    ));
}

#[test]
fn missing_signature_is_its_own_reason() {
    let b = config_bundle();
    let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    let at = 16 + mlen;
    let mut c = b[..at].to_vec();
    c.extend_from_slice(&b[at + format::SIGNATURE_SECTION_LEN..]);
    assert!(matches!(
        err(&c, &policy(&[&key(1)])),
        VerifyError::MissingSignature { offset } if offset == at as u64
    ));
}

#[test]
fn downgrade_equal_and_lower_are_rejected() {
    let b = update_bundle(&meta(7));
    let mut p = policy(&[&key(1)]);
    for installed in [7, 8, 100] {
        p.installed_version = Some(installed);
        assert!(
            matches!(err(&b, &p), VerifyError::NotNewer { version: 7, installed: i } if i == installed),
            "installed {installed}"
        );
    }
    p.installed_version = Some(6);
    assert!(verify(&b, &p).is_ok());
    // Even a caller that permits rollback gets no downgrade from an unflagged bundle.
    p.installed_version = Some(8);
    p.allow_rollback = true;
    assert!(matches!(err(&b, &p), VerifyError::NotNewer { .. }));
}

#[test]
fn signed_rollback_needs_the_callers_permission() {
    let mut m = meta(3);
    m.rollback = true;
    let b = update_bundle(&m);
    let mut p = policy(&[&key(1)]);
    p.installed_version = Some(5);
    assert!(matches!(
        err(&b, &p),
        VerifyError::RollbackNotPermitted {
            version: 3,
            installed: 5
        }
    ));
    p.allow_rollback = true;
    assert!(verify(&b, &p).is_ok());
    // A rollback to the installed version itself is still not newer.
    p.installed_version = Some(3);
    assert!(matches!(err(&b, &p), VerifyError::NotNewer { .. }));
}

#[test]
fn swapped_payload_contents_are_rejected() {
    let b = update_bundle(&meta(7));
    let p = policy(&[&key(1)]);
    let (_, files, _) = layout(&b);
    // Same size, other bytes: only the hash can tell.
    let mut c = b.clone();
    let (start, end) = files[0];
    c[end - 16..end].copy_from_slice(b"BBBBBBBBBBBBBBBB");
    assert!(matches!(
        err(&c, &p),
        VerifyError::HashMismatch { name, .. } if name == "rootfs.img"
    ));
    assert!(start < end);
    // A config payload swapped for another valid config of the same size.
    let other = create(
        Kind::Config,
        &meta(6),
        &[Payload::bytes(
            CONFIG_PAYLOAD,
            CONFIG.replace("version = 5", "version = 6"),
        )],
        &key(1),
    )
    .unwrap();
    let cfg = config_bundle();
    let (_, cf, _) = layout(&cfg);
    let (_, of, _) = layout(&other);
    let mut spliced = cfg[..cf[0].0].to_vec();
    spliced.extend_from_slice(&other[of[0].0..]);
    assert!(matches!(
        err(&spliced, &p),
        VerifyError::HashMismatch { name, .. } if name == CONFIG_PAYLOAD
    ));
}

#[test]
fn reordered_payload_sections_are_rejected() {
    let b = update_bundle(&meta(7));
    let (head, files, end) = layout(&b);
    let mut c = b[..head].to_vec();
    c.extend_from_slice(&b[files[1].0..files[1].1]);
    c.extend_from_slice(&b[files[0].0..files[0].1]);
    c.extend_from_slice(&b[end..]);
    assert!(matches!(
        err(&c, &policy(&[&key(1)])),
        VerifyError::OutOfOrder { expected, found } if expected == "rootfs.img" && found == "version.txt"
    ));
}

#[test]
fn extra_and_duplicate_files_are_rejected() {
    let b = update_bundle(&meta(7));
    let p = policy(&[&key(1)]);
    let (_, files, end) = layout(&b);
    let mut extra = b[..end].to_vec();
    format::write_file_header(&mut extra, "evil.sh", 3).unwrap();
    extra.extend_from_slice(b"rm\n");
    extra.extend_from_slice(&b[end..]);
    assert!(matches!(
        err(&extra, &p),
        VerifyError::ExtraFile { name, offset } if name == "evil.sh" && offset == end as u64
    ));
    let mut dup = b[..end].to_vec();
    dup.extend_from_slice(&b[files[0].0..files[0].1]);
    dup.extend_from_slice(&b[end..]);
    assert!(matches!(
        err(&dup, &p),
        VerifyError::DuplicateFile { name, .. } if name == "rootfs.img"
    ));
}

#[test]
fn missing_file_is_rejected() {
    let b = update_bundle(&meta(7));
    let (_, files, end) = layout(&b);
    let mut c = b[..files[1].0].to_vec();
    c.extend_from_slice(&b[end..]);
    assert!(matches!(
        err(&c, &policy(&[&key(1)])),
        VerifyError::MissingFile { name } if name == "version.txt"
    ));
}

#[test]
fn size_claim_is_checked_before_any_read() {
    let b = config_bundle();
    let (_, files, _) = layout(&b);
    let size_at = files[0].0 + 6 + CONFIG_PAYLOAD.len();
    let mut c = b.clone();
    c[size_at..size_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        err(&c, &policy(&[&key(1)])),
        VerifyError::SizeMismatch {
            found: u64::MAX,
            ..
        }
    ));
}

#[test]
fn huge_manifest_length_is_refused_without_allocating() {
    let mut b = config_bundle();
    b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        err(&b, &policy(&[&key(1)])),
        VerifyError::ManifestLength { len: u32::MAX, .. }
    ));
}

/// A manifest JSON like the creator's but with one field replaced.
fn manifest_json(kind: &str, extra: &str) -> Vec<u8> {
    let sha = hex::encode(Sha256::digest(b"x"));
    format!(
        r#"{{"format":1,"kind":"{kind}","version":2,"cluster":"lab","created":"2026-01-01T00:00:00Z","compatible":"twinwall-1","rollback":false,{extra}"payloads":[{{"name":"a","size":1,"sha256":"{sha}"}}]}}"#
    )
    .into_bytes()
}

#[test]
fn unknown_kind_is_rejected_even_when_signed() {
    let b = assemble(&manifest_json("firmware", ""), &key(1), &[("a", b"x")]);
    match err(&b, &policy(&[&key(1)])) {
        VerifyError::Manifest(ManifestError::UnknownKind { kind }) => assert_eq!(kind, "firmware"),
        other => panic!("{other:?}"),
    }
    // The control: the same hand-made bundle with a known kind verifies.
    let ok = assemble(&manifest_json("os-update", ""), &key(1), &[("a", b"x")]);
    assert!(verify(&ok, &policy(&[&key(1)])).is_ok());
}

#[test]
fn unknown_manifest_field_is_a_parse_error() {
    let b = assemble(
        &manifest_json("os-update", r#""force":true,"#),
        &key(1),
        &[("a", b"x")],
    );
    match err(&b, &policy(&[&key(1)])) {
        VerifyError::Manifest(ManifestError::Parse { reason }) => {
            assert!(reason.contains("force"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn path_like_payload_names_are_refused() {
    for name in ["../etc/passwd", "a/b", ".hidden", ""] {
        let sha = hex::encode(Sha256::digest(b"x"));
        let m = format!(
            r#"{{"format":1,"kind":"os-update","version":2,"cluster":"lab","created":"2026-01-01T00:00:00Z","compatible":"twinwall-1","rollback":false,"payloads":[{{"name":"{name}","size":1,"sha256":"{sha}"}}]}}"#
        );
        assert!(
            matches!(
                Manifest::parse(m.as_bytes()),
                Err(ManifestError::Invalid { field, .. }) if field == "payloads[0].name"
            ),
            "{name:?}"
        );
        let made = create(
            Kind::OsUpdate,
            &meta(1),
            &[Payload::bytes(name, "x")],
            &key(1),
        );
        assert!(matches!(made, Err(CreateError::Manifest(_))), "{name:?}");
    }
}

#[test]
fn wrong_kind_and_incompatible_are_rejected() {
    let b = config_bundle();
    let mut p = policy(&[&key(1)]);
    p.kind = Some(Kind::OsUpdate);
    assert!(matches!(
        err(&b, &p),
        VerifyError::WrongKind {
            expected: Kind::OsUpdate,
            found: Kind::Config
        }
    ));
    p.kind = Some(Kind::Config);
    p.compatible = Some("twinwall-2".into());
    assert!(matches!(
        err(&b, &p),
        VerifyError::Incompatible { expected, found } if expected == "twinwall-2" && found == "twinwall-1"
    ));
}

#[test]
fn checks_run_in_the_documented_order() {
    // Wrong kind AND downgrade AND incompatible: kind is reported first.
    let b = config_bundle();
    let mut p = policy(&[&key(1)]);
    p.kind = Some(Kind::OsUpdate);
    p.compatible = Some("other".into());
    p.installed_version = Some(99);
    assert_eq!(err(&b, &p).code(), "wrong_kind");
    p.kind = None;
    assert_eq!(err(&b, &p).code(), "incompatible");
    p.compatible = None;
    assert_eq!(err(&b, &p).code(), "not_newer");
    // A tampered payload of an untrusted bundle: the signature is reported, not the hash.
    let mut c = b.clone();
    let last = c.len() - 5;
    c[last] ^= 1;
    assert_eq!(err(&c, &policy(&[&key(2)])).code(), "unknown_key");
    assert_eq!(err(&c, &p).code(), "hash_mismatch");
}

/// Signs a config bundle without the creator's config check.
fn unchecked_config_bundle(text: &str, version: u64) -> Vec<u8> {
    let payloads = [Payload::bytes(CONFIG_PAYLOAD, text)];
    let m = build_manifest(Kind::Config, &meta(version), &payloads).unwrap();
    let mut out = Vec::new();
    write_bundle(&m, &payloads, &key(1), &mut out).unwrap();
    out
}

#[test]
fn invalid_config_inside_a_signed_bundle_is_rejected() {
    let b = unchecked_config_bundle("[cluster]\nname = \"lab\"\nversion = \"five\"\n", 5);
    match err(&b, &policy(&[&key(1)])) {
        VerifyError::ConfigInvalid(r) => {
            assert!(r.diagnostics[0].starts_with("cluster.toml"), "{r:?}")
        }
        other => panic!("{other:?}"),
    }
    let b = unchecked_config_bundle("[cluster\n", 5);
    assert_eq!(err(&b, &policy(&[&key(1)])).code(), "config_invalid");
    // Valid config, but the manifest claims another version than the config has.
    let b = unchecked_config_bundle(CONFIG, 6);
    assert!(matches!(
        err(&b, &policy(&[&key(1)])),
        VerifyError::ConfigMismatch {
            field: "version",
            ..
        }
    ));
    // And the creator refuses an invalid config outright.
    let made = create(
        Kind::Config,
        &meta(5),
        &[Payload::bytes(CONFIG_PAYLOAD, "[cluster\n")],
        &key(1),
    );
    assert!(matches!(made, Err(CreateError::InvalidConfig(_))));
}

#[test]
fn config_bundle_must_carry_exactly_cluster_toml() {
    let p = [
        Payload::bytes(CONFIG_PAYLOAD, CONFIG),
        Payload::bytes("x", "y"),
    ];
    let m = build_manifest(Kind::Config, &meta(5), &p).unwrap();
    let mut b = Vec::new();
    write_bundle(&m, &p, &key(1), &mut b).unwrap();
    assert_eq!(err(&b, &policy(&[&key(1)])).code(), "config_payload");
}

#[test]
fn failing_sink_stops_verification() {
    struct Full;
    impl PayloadSink for Full {
        fn begin(&mut self, _: &PayloadEntry) -> io::Result<()> {
            Ok(())
        }
        fn write(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::other("disk full"))
        }
        fn end(&mut self, _: &PayloadEntry) -> io::Result<()> {
            Ok(())
        }
    }
    let b = config_bundle();
    let e = verify_stream(b.as_slice(), &policy(&[&key(1)]), &mut Full).unwrap_err();
    assert!(matches!(e, VerifyError::Sink { .. }), "{e:?}");
}

#[test]
fn payload_file_changing_between_passes_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    fs::write(&f, b"before").unwrap();
    let p = [Payload::file("img", &f)];
    let m = build_manifest(Kind::OsUpdate, &meta(1), &p).unwrap();
    fs::write(&f, b"after!").unwrap();
    let r = write_bundle(&m, &p, &key(1), &mut Vec::new());
    assert!(
        matches!(r, Err(CreateError::PayloadChanged { .. })),
        "{r:?}"
    );
}

#[test]
fn source_date_epoch_sets_created() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_500);
    let t = created_from(Some("1700000000"), now).unwrap();
    assert_eq!(manifest::format_created(t), "2023-11-14T22:13:20Z");
    let t = created_from(None, now).unwrap();
    assert_eq!(manifest::format_created(t), "2027-01-15T08:00:00Z");
    assert!(matches!(
        created_from(Some("yesterday"), now),
        Err(CreateError::SourceDateEpoch { .. })
    ));
}

#[test]
fn key_texts_round_trip_and_hide_secrets() {
    let k = keys::generate_signing_key().unwrap();
    let text = keys::encode_secret_key(&k);
    assert!(text.starts_with("twinwall-ed25519-secret-v1 "));
    let back = keys::parse_secret_key(&text, "k.key").unwrap();
    assert_eq!(back.to_bytes(), k.to_bytes());
    let b64_secret = text.split(' ').nth(1).unwrap().trim();
    assert!(!format!("{k:?}").contains(b64_secret));
    assert!(!format!("{:?}", k.to_bytes()).is_empty());

    let pubtext = keys::encode_public_key(&k.verifying_key());
    assert!(pubtext.contains(&format!("key-id:{}", KeyId::of(&k.verifying_key()))));
    assert_eq!(
        keys::parse_public_key(&pubtext, "k.pub").unwrap(),
        k.verifying_key()
    );

    let s = SyncKey::generate().unwrap();
    let st = s.encode();
    assert_eq!(
        SyncKey::parse(&st, "sync.key").unwrap().expose(),
        s.expose()
    );
    assert_eq!(format!("{s:?}"), "SyncKey(<redacted>)");
    assert_ne!(SyncKey::generate().unwrap().expose(), s.expose());
}

#[test]
fn malformed_key_texts_name_the_file_and_the_problem() {
    let k = key(1);
    let pubtext = keys::encode_public_key(&k.verifying_key());
    // A public key where a secret key is expected.
    let e = keys::parse_secret_key(&pubtext, "/etc/k.key").unwrap_err();
    assert!(
        e.to_string().contains("/etc/k.key") && e.to_string().contains("secret"),
        "{e}"
    );
    let e = keys::parse_public_key("twinwall-ed25519-public-v1 !!!\n", "p.pub").unwrap_err();
    assert!(e.to_string().contains("base64"), "{e}");
    let e = keys::parse_public_key("twinwall-ed25519-public-v1 AAAA\n", "p.pub").unwrap_err();
    assert!(e.to_string().contains("32 bytes"), "{e}");
    let e = keys::parse_public_key("twinwall-ed25519-public-v1\n", "p.pub").unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn secret_files_are_0600_and_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.key");
    let secret = keys::encode_secret_key(&key(1));
    fsio::write_secret(&path, &secret, false).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let other = keys::encode_secret_key(&key(2));
    let e = fsio::write_secret(&path, &other, false).unwrap_err();
    assert!(matches!(e, fsio::FsError::Exists { .. }), "{e:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), secret.as_str());
    fsio::write_secret(&path, &other, true).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), other.as_str());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp files left"
    );
}

#[test]
fn failed_atomic_write_leaves_target_and_directory_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.bundle");
    fs::write(&path, b"old").unwrap();
    let r = fsio::write_atomic::<fsio::FsError>(&path, 0o644, true, |f| {
        use std::io::Write;
        f.write_all(b"half").unwrap();
        Err(fsio::FsError::Exists { path: "x".into() })
    });
    assert!(r.is_err());
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn staged_payloads_appear_only_after_an_accepted_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(&[&key(1)]);
    let b = update_bundle(&meta(7));
    // Rejected: a payload byte changed. The staging directory vanishes with the sink.
    let mut bad = b.clone();
    let (_, files, _) = layout(&bad);
    bad[files[1].1 - 1] ^= 1;
    let mut sink = StagingSink::new_in(dir.path()).unwrap();
    assert!(sink.path().starts_with(dir.path()));
    let e = verify_stream(bad.as_slice(), &p, &mut sink).unwrap_err();
    assert_eq!(e.code(), "hash_mismatch");
    drop(sink);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
    // Accepted: committed as a directory holding exactly the payloads.
    let mut sink = StagingSink::new_in(dir.path()).unwrap();
    verify_stream(b.as_slice(), &p, &mut sink).unwrap();
    let dest = dir.path().join("update-7");
    sink.commit(&dest).unwrap();
    assert_eq!(
        fs::read(dest.join("rootfs.img")).unwrap(),
        b"AAAAAAAAAAAAAAAA"
    );
    assert_eq!(
        fs::read(dest.join("version.txt")).unwrap(),
        b"twinwall 1.2.3\n"
    );
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 2);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // Committing over an existing destination is refused and cleans up.
    let mut sink = StagingSink::new_in(dir.path()).unwrap();
    verify_stream(b.as_slice(), &p, &mut sink).unwrap();
    assert!(matches!(
        sink.commit(&dest),
        Err(fsio::FsError::Exists { .. })
    ));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}
