//! `twinwall config ...`
use clap::Subcommand;
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {}
pub fn run(c: ConfigCmd) -> anyhow::Result<()> {
    match c {}
}
