//! boot
pub struct BootstrapOptions;
pub fn bootstrap() {}
