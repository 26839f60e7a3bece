//! Lints.
use serde::Serialize;
use twinwall_config::NodeView;
/// A lint finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lint {
    pub kind: LintKind,
    pub subject: String,
    pub message: String,
}
/// Kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LintKind {
    Shadowed,
}
impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}
/// Lints.
pub fn lint(_v: &NodeView) -> Vec<Lint> {
    Vec::new()
}
