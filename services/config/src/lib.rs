//! The cluster config: the TOML model, validation with file:line:column diagnostics, the
//! per-node resolved view ([`view::NodeView`]) and the JSON Schema.

pub mod view;

pub use view::*;
