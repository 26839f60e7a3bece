//! `twinwall key ...`
use clap::Subcommand;
#[derive(Debug, Subcommand)]
pub enum KeyCmd {}
pub fn run(c: KeyCmd) -> anyhow::Result<()> {
    match c {}
}
