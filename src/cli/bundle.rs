//! `twinwall bundle ...`
use clap::Subcommand;
#[derive(Debug, Subcommand)]
pub enum BundleCmd {}
pub fn run(c: BundleCmd) -> anyhow::Result<()> {
    match c {}
}
