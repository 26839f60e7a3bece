//! Times the phases of `parse` on one file (a development aid for the benchmark).
fn main() {
    let path = std::env::args().nth(1).expect("usage: phases FILE");
    let text = std::fs::read_to_string(&path).unwrap();
    let t = std::time::Instant::now();
    let (doc, errs) = toml::de::DeTable::parse_recoverable(&text);
    println!("DeTable::parse: {:?} ({} errors)", t.elapsed(), errs.len());
    drop(doc);
    let t = std::time::Instant::now();
    let r = twinwall_config::parse(&path, &text);
    println!("parse (all): {:?} ok={}", t.elapsed(), r.is_ok());
    let cfg = r.unwrap();
    let t = std::time::Instant::now();
    let v = cfg.node_view(&cfg.node_names()[0]).unwrap();
    println!(
        "node_view: {:?} ({} rules)",
        t.elapsed(),
        v.policy.rules.len()
    );
}
