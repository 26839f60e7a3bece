//! The ruleset service: the policy -> nftables compiler ([`compile`]), the lints
//! ([`lint`]), the rule-level diff ([`diff`]), the fail-closed bootstrap ruleset
//! ([`bootstrap`]) and the atomic apply ([`apply`]).
//!
//! Everything but [`apply`] is pure: a [`NodeView`](twinwall_config::NodeView) in, text
//! and data out.

pub mod apply;
pub mod bootstrap;
pub mod compile;
pub mod diff;
pub mod fixtures;
pub mod icmp;
pub mod lint;
mod merge;

pub use apply::{ApplyError, Nft, apply, check};
pub use bootstrap::{BootstrapOptions, bootstrap};
pub use compile::{CompileError, Options, Script, TABLE, compile};
pub use diff::{Change, ChangeKind, FieldChange, Unit, diff, units};
pub use lint::{Lint, LintKind, lint};
