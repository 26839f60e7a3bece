//! The one seam between bundles and the cluster config: validating the `cluster.toml`
//! a config bundle carries (with `twinwall_config::parse`, the full validator) and
//! reading its `[cluster]` name and version.

/// The facts a bundle takes from a valid config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFacts {
    /// `[cluster] name`.
    pub cluster: String,
    /// `[cluster] version`.
    pub version: u64,
}

/// A config that does not validate: every diagnostic, one line each
/// (`file:line:column: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(.diagnostics))]
pub struct ConfigRejected {
    /// All diagnostics, in file order.
    pub diagnostics: Vec<String>,
}

fn summary(d: &[String]) -> String {
    match d {
        [] => "config does not validate".into(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// Validates a config text with the config crate; `name` is the file name used in
/// diagnostics. Only errors count; each becomes one line with its hint.
pub fn check_config(name: &str, text: &str) -> Result<ConfigFacts, ConfigRejected> {
    match twinwall_config::parse(name, text) {
        Ok(cfg) => Ok(ConfigFacts {
            cluster: cfg.cluster_name().to_owned(),
            version: cfg.version(),
        }),
        Err(diags) => Err(ConfigRejected {
            diagnostics: diags
                .errors()
                .map(|d| {
                    let mut line = format!(
                        "{}:{}:{}: {}: {}",
                        d.file, d.line, d.column, d.severity, d.message
                    );
                    if !d.hint.is_empty() {
                        line.push_str(&format!(" (hint: {})", d.hint));
                    }
                    line
                })
                .collect(),
        }),
    }
}
