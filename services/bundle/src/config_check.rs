//! The one seam between bundles and the cluster config: validating the `cluster.toml`
//! a config bundle carries and reading its `[cluster]` name and version.
//!
//! INTERIM: `twinwall_config::parse(name, text) -> Result<Config, Diagnostics>` is being
//! written by the config area and has not landed on main yet. Until it does, this checks
//! only that the text is TOML with a `[cluster]` table holding a `name` string and a
//! non-negative integer `version` — the two facts bundles need. When it lands, the body
//! of [`check_config`] becomes a call to `twinwall_config::parse` (nothing else changes).

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

/// Validates a config text; `name` is the file name used in diagnostics.
pub fn check_config(name: &str, text: &str) -> Result<ConfigFacts, ConfigRejected> {
    let reject = |msg: String| ConfigRejected {
        diagnostics: vec![msg],
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let pos = e
            .span()
            .map(|s| line_col(text, s.start))
            .map(|(l, c)| format!("{l}:{c}: "))
            .unwrap_or_default();
        reject(format!("{name}:{pos}{}", e.message()))
    })?;
    let cluster = table
        .get("cluster")
        .and_then(|c| c.as_table())
        .ok_or_else(|| reject(format!("{name}: missing table [cluster]")))?;
    let cname = cluster
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| reject(format!("{name}: [cluster] needs `name` (a string)")))?;
    let version = cluster
        .get("version")
        .and_then(|v| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| {
            reject(format!(
                "{name}: [cluster] needs `version` (a non-negative integer)"
            ))
        })?;
    Ok(ConfigFacts {
        cluster: cname.to_owned(),
        version,
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |p| before.len() - p - 1)
        + 1;
    (line, col)
}
