//! Benchmark (run by `scripts/bench-bundle.sh`, not a test): create and stream-verify a
//! 50 MiB OS-update bundle from a file, and compare with the yardstick `sha256sum` over
//! the same file in the same run. Prints throughputs, ratios and peak RSS.
//!
//! Usage: `bench_verify [MiB]` (default 50).

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use twinwall_bundle::{
    BundleMeta, DEFAULT_COMPATIBLE, DiscardSink, Kind, Payload, Policy, SigningKey, create_file,
    verify_stream,
};

fn best_of<F: FnMut()>(n: usize, mut f: F) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("rootfs.img");
    {
        let mut f = File::create(&img).expect("create payload");
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..mib {
            f.write_all(&block).expect("write payload");
        }
    }
    let key = SigningKey::from_bytes(&[9; 32]);
    let meta = BundleMeta {
        version: 2,
        cluster: "bench".into(),
        compatible: DEFAULT_COMPATIBLE.into(),
        created: SystemTime::UNIX_EPOCH,
        rollback: false,
    };
    let out = dir.path().join("update.bundle");
    let payloads = [Payload::file("rootfs.img", &img)];
    let create_t = best_of(3, || {
        create_file(Kind::OsUpdate, &meta, &payloads, &key, &out).expect("create");
    });
    let policy = Policy {
        trusted: vec![key.verifying_key()],
        installed_version: Some(1),
        kind: Some(Kind::OsUpdate),
        compatible: Some(DEFAULT_COMPATIBLE.into()),
        allow_rollback: false,
    };
    let rss_before = peak_rss_kib();
    let verify_t = best_of(5, || {
        let f = BufReader::new(File::open(&out).expect("open"));
        verify_stream(f, &policy, &mut DiscardSink).expect("verify");
    });
    let rss_after = peak_rss_kib();
    let sha_t = best_of(5, || {
        let s = Command::new("sha256sum")
            .arg(&out)
            .output()
            .expect("run sha256sum");
        assert!(s.status.success());
    });
    let mb = mib as f64 * 1.048_576;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!("bundle bench: {mib} MiB os-update bundle (best of 5, page cache warm)");
    println!(
        "  verify_stream   {:8.1} ms  {:7.1} MB/s",
        verify_t.as_secs_f64() * 1e3,
        rate(verify_t)
    );
    println!(
        "  sha256sum       {:8.1} ms  {:7.1} MB/s   (yardstick)",
        sha_t.as_secs_f64() * 1e3,
        rate(sha_t)
    );
    println!(
        "  create_file     {:8.1} ms  {:7.1} MB/s   (hash pass + copy pass + fsync)",
        create_t.as_secs_f64() * 1e3,
        rate(create_t)
    );
    println!(
        "  ratio verify/sha256sum = {:.2}",
        verify_t.as_secs_f64() / sha_t.as_secs_f64()
    );
    println!(
        "  peak RSS {rss_after} KiB (before verifying {rss_before} KiB): verify memory does not grow with the bundle"
    );
}
