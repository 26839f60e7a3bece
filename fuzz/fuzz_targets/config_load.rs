//! Fuzzes the cluster config loader (`twinwall_config::parse`) with arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = twinwall_config::parse("fuzz.toml", text);
    }
});
