//! The committed JSON Schema (`docs/twinwall-config.schema.json`) is the one the types
//! generate, and it describes the config as the parser sees it.

use std::path::Path;

fn committed() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/twinwall-config.schema.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_schema_is_up_to_date() {
    let generated = serde_json::to_string_pretty(&twinwall_config::json_schema()).unwrap() + "\n";
    assert!(
        committed() == generated,
        "docs/twinwall-config.schema.json is stale: run `twinwall config schema > docs/twinwall-config.schema.json`"
    );
}

#[test]
fn schema_closes_every_table_and_marks_required_keys() {
    let s = twinwall_config::json_schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(s["properties"]["nodes"]["minProperties"], 2);
    assert_eq!(s["properties"]["nodes"]["maxProperties"], 2);
    let defs = s["$defs"].as_object().unwrap();
    for (name, def) in defs {
        if def.get("properties").is_some() {
            assert_eq!(def["additionalProperties"], false, "{name} is open");
        }
    }
    let iface = &defs["RawInterface"];
    assert_eq!(iface["required"], serde_json::json!(["device", "address"]));
    assert_eq!(
        defs["RawVrrp"]["properties"]["advert_interval_ms"]["multipleOf"],
        10
    );
    // TOML has no null: no key offers one.
    assert!(!s.to_string().contains("\"null\""));
}
