//! diff
pub struct Unit;
pub struct Change;
pub enum ChangeKind {}
pub fn units() {}
pub fn diff() {}
