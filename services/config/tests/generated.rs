//! The large-config generator (`scripts/gen-config.py`, also used by the benchmark)
//! produces valid configs whose views hold what was asked for.

use std::path::Path;
use std::process::Command;

fn generate(rules: usize, objects: usize) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gen-config.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--rules",
            &rules.to_string(),
            "--objects",
            &objects.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn generated_config_is_valid_and_complete() {
    let text = generate(300, 1000);
    let cfg = twinwall_config::parse("generated.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let v = cfg.node_view("big-a").unwrap();
    assert_eq!(v.policy.rules.len(), 300);
    assert_eq!(v.objects.networks.len() + v.objects.services.len(), 1000);
    // Rules reference objects by name and get them expanded.
    assert!(v.policy.rules.iter().any(|r| matches!(&r.from, twinwall_config::Endpoint::Network { networks, .. } if !networks.is_empty())));
}

#[test]
fn errors_in_a_generated_config_are_all_found() {
    // Break every 50th rule's service reference: each one is reported at its line.
    let text = generate(200, 400);
    let mut broken = String::new();
    let mut want = Vec::new();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("service = \"svc") {
            n += 1;
            if n % 50 == 0 {
                broken.push_str("service = \"nosuch\"\n");
                want.push((i + 1, 11));
                continue;
            }
        }
        broken.push_str(line);
        broken.push('\n');
    }
    let d = twinwall_config::parse("generated.toml", &broken).unwrap_err();
    let at: Vec<(usize, usize)> = d.errors().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, want);
    assert!(
        d.errors()
            .all(|e| e.message == "unknown service object `nosuch`")
    );
}

#[test]
fn every_unknown_key_of_a_large_config_is_reported() {
    // 150 mistyped keys (one per rule): all reported, each with its suggestion.
    let text = generate(150, 300);
    let mut broken = String::new();
    let mut want = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("action = ") {
            broken.push_str(&format!("acton = {rest}\n"));
            want.push((i + 1, 1));
        } else {
            broken.push_str(line);
            broken.push('\n');
        }
    }
    assert_eq!(want.len(), 150);
    let d = twinwall_config::parse("generated.toml", &broken).unwrap_err();
    let at: Vec<(usize, usize)> = d.errors().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, want);
    assert!(d.errors().all(|e| e.hint == "did you mean `action`?"));
}
