//! The ruleset service: the policy -> nftables compiler ([`compile`]), the lints
//! ([`lint`]), the rule-level diff ([`diff`]), the fail-closed bootstrap ruleset
//! ([`bootstrap`]), the atomic apply ([`apply`]) and the rule counters read back from
//! the kernel by config rule name ([`counters`]).
//!
//! Everything but [`apply`] is pure: a [`NodeView`](twinwall_config::NodeView) in, text
//! and data out.

pub mod apply;
pub mod bootstrap;
pub mod compile;
pub mod counters;
pub mod diff;
pub mod fixtures;
pub mod icmp;
pub mod lint;
mod merge;

pub use apply::{ApplyError, Nft, apply, check};
pub use bootstrap::{BootstrapOptions, bootstrap};
pub use compile::{CompileError, Options, Script, TABLE, compile};
pub use counters::{CountersError, RuleCounter};
pub use diff::{Change, ChangeKind, FieldChange, Unit, diff, units};
pub use lint::{Lint, LintKind, lint};
