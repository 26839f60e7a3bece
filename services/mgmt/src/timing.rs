//! Step timings of a push on one node (verify, stage, install, nft, the peer's round
//! trips, ...): measured with [`std::time::Instant`], logged with `tracing` and returned in
//! the answer (`timings_ms`), so that the time from upload to enforced can be taken
//! apart on the appliance itself.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Milliseconds per named step, in the order they were recorded (the log line keeps the
/// order; the JSON answer is an object keyed by step).
#[derive(Debug, Clone, Default)]
pub struct Timings(Vec<(String, f64)>);

impl Serialize for Timings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Milliseconds with 0.1 ms resolution.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

impl Timings {
    /// Records `step` as the time since `since`.
    pub fn since(&mut self, step: &str, since: Instant) {
        self.set(step, since.elapsed());
    }

    /// Records `step` as `d`.
    pub fn set(&mut self, step: &str, d: Duration) {
        self.0.push((step.to_string(), ms(d)));
    }

    /// Adds every step of a sub-operation's timings (a JSON object of numbers, as
    /// another node answers them) under `prefix`.
    pub fn extend(&mut self, prefix: &str, other: &serde_json::Value) {
        for (k, v) in other.as_object().into_iter().flatten() {
            if let Some(v) = v.as_f64() {
                self.0.push((format!("{prefix}.{k}"), v));
            }
        }
    }

    /// The recorded value of `step`, if any.
    pub fn get(&self, step: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == step).map(|(_, v)| *v)
    }

    /// One line, `step=ms` each, in the order recorded (a log field).
    pub fn line(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_and_names() {
        let mut t = Timings::default();
        t.set("verify", Duration::from_micros(1_234));
        t.set("apply", Duration::from_millis(20));
        t.extend("peer", &serde_json::json!({"install": 3.0, "junk": "x"}));
        assert_eq!(t.line(), "verify=1.2 apply=20 peer.install=3");
        assert_eq!(t.get("apply"), Some(20.0));
        assert_eq!(t.get("peer.install"), Some(3.0));
        assert_eq!(t.get("nothing"), None);
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j["verify"], 1.2);
        assert_eq!(j["peer.install"], 3.0);
    }
}
