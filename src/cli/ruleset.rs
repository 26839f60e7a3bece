//! `twinwall ruleset ...`: compile a node's policy to nft, check it, apply it atomically,
//! diff two configs by rule name, and the fail-closed bootstrap ruleset.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use twinwall_config::NodeView;
use twinwall_ruleset::{BootstrapOptions, CompileError, Options, Script};

use super::Reported;

/// Ruleset commands.
#[derive(Debug, Subcommand)]
pub enum RulesetCmd {
    /// Print the nft script of one node (lint warnings go to stderr).
    Compile {
        /// The cluster config.
        file: PathBuf,
        /// The node (a key of `[nodes]`).
        #[arg(long)]
        node: String,
        /// Treat lint warnings as errors (exit 1, nothing printed on stdout).
        #[arg(long)]
        strict: bool,
    },
    /// Compile and have nft check the result (`nft -c`; needs CAP_NET_ADMIN).
    Check {
        /// The cluster config.
        file: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
        /// Treat lint warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Compile and apply in one transaction (`nft -f`); on failure the old ruleset stays.
    Apply {
        /// The cluster config.
        file: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
        /// Treat lint warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Run `nft -c` first (a separate verdict; twice the work: `nft -f` alone is
        /// atomic, so a failing apply changes nothing either way).
        #[arg(long, conflicts_with = "no_check")]
        check: bool,
        /// The default since the check pass was dropped; accepted for old scripts.
        #[arg(long, hide = true)]
        no_check: bool,
    },
    /// What applying NEW instead of OLD would change, by rule name (exit 0 either way).
    Diff {
        /// The config in force.
        old: PathBuf,
        /// The candidate config.
        new: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Packets and bytes counted by each rule of the loaded ruleset, by config rule name
    /// (each rule of a merged run by its own set element; read with `nft -j list table`).
    Counters {
        /// Print the counters as JSON (`[{"rule", "chain", "packets", "bytes", "merged"}]`).
        #[arg(long)]
        json: bool,
    },
    /// Apply (or with --print, print) the built-in fail-closed ruleset.
    Bootstrap {
        /// Print the script instead of applying it.
        #[arg(long)]
        print: bool,
        /// TCP port of the management API to leave open.
        #[arg(long, default_value_t = twinwall_config::DEFAULT_MANAGEMENT_PORT)]
        management_port: u16,
        /// UDP port of conntrack sync to leave open.
        #[arg(long, default_value_t = twinwall_config::DEFAULT_SYNC_PORT)]
        sync_port: u16,
    },
}

/// Runs a ruleset command.
pub fn run(c: RulesetCmd) -> anyhow::Result<()> {
    match c {
        RulesetCmd::Compile { file, node, strict } => {
            let script = compiled(&file, &node, strict)?;
            print!("{}", script.text);
            Ok(())
        }
        RulesetCmd::Check { file, node, strict } => {
            let script = compiled(&file, &node, strict)?;
            twinwall_ruleset::check(&script.text)
                .with_context(|| format!("{}: node {node}", file.display()))?;
            println!(
                "{}: node {node}: ruleset OK ({} nft rules)",
                file.display(),
                script.rule_count
            );
            Ok(())
        }
        RulesetCmd::Apply {
            file,
            node,
            strict,
            check,
            no_check: _,
        } => {
            let script = compiled(&file, &node, strict)?;
            let nft = twinwall_ruleset::Nft::default();
            if check {
                nft.check_then_apply(&script.text)
            } else {
                nft.apply(&script.text)
            }
            .with_context(|| format!("{}: node {node}", file.display()))?;
            println!(
                "{}: node {node}: ruleset applied ({} nft rules)",
                file.display(),
                script.rule_count
            );
            Ok(())
        }
        RulesetCmd::Diff {
            old,
            new,
            node,
            json,
        } => {
            let changes = twinwall_ruleset::diff(&view(&old, &node)?, &view(&new, &node)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else if changes.is_empty() {
                println!("no changes");
            } else {
                for c in &changes {
                    println!("{c}");
                }
            }
            Ok(())
        }
        RulesetCmd::Counters { json } => {
            let counters = twinwall_ruleset::counters::read(&twinwall_ruleset::Nft::default())
                .context("rule counters")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&counters)?);
            } else {
                let w = counters
                    .iter()
                    .map(|c| c.rule.len())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                println!(
                    "{:<w$}  {:<11}  {:>12}  {:>14}",
                    "RULE", "CHAIN", "PACKETS", "BYTES"
                );
                for c in &counters {
                    let chain = if c.merged {
                        format!("{}*", c.chain)
                    } else {
                        c.chain.clone()
                    };
                    println!(
                        "{:<w$}  {:<11}  {:>12}  {:>14}",
                        c.rule, chain, c.packets, c.bytes
                    );
                }
                if counters.iter().any(|c| c.merged) {
                    println!("(* merged into one nft rule over a set; counted by its element)");
                }
            }
            Ok(())
        }
        RulesetCmd::Bootstrap {
            print,
            management_port,
            sync_port,
        } => {
            let text = twinwall_ruleset::bootstrap(&BootstrapOptions {
                management_port,
                sync_port,
            });
            if print {
                print!("{text}");
            } else {
                twinwall_ruleset::apply(&text).context("bootstrap ruleset")?;
                println!(
                    "bootstrap ruleset applied (management tcp/{management_port}, sync udp/{sync_port})"
                );
            }
            Ok(())
        }
    }
}

/// Loads a config and resolves one node's view; config errors are printed in full.
fn view(file: &Path, node: &str) -> anyhow::Result<NodeView> {
    let cfg = match twinwall_config::load(file) {
        Ok(cfg) => cfg,
        Err(diags) => {
            eprintln!("{diags}");
            return Err(Reported(format!("{} has errors", file.display())).into());
        }
    };
    for w in cfg.warnings().all() {
        eprintln!("{w}");
    }
    let view = cfg.node_view(node);
    // The command ends the process soon after; freeing a big config's many small
    // allocations one by one is wasted work on the apply path (10k rules: about 1 % of
    // the compile's instructions, callgrind), so the memory goes back with the process.
    std::mem::forget(cfg);
    Ok(view?)
}

fn compiled(file: &Path, node: &str, strict: bool) -> anyhow::Result<Script> {
    let v = view(file, node)?;
    let compiled = twinwall_ruleset::compile(
        &v,
        &Options {
            strict,
            ..Options::default()
        },
    );
    // As in `view`: the process frees the view (10k rules: 2 % of the compile) at exit.
    std::mem::forget(v);
    match compiled {
        Ok(script) => {
            for l in &script.lints {
                eprintln!("{}: node {node}: warning: {l}", file.display());
            }
            Ok(script)
        }
        Err(CompileError::Strict { lints }) => {
            for l in &lints {
                eprintln!("{}: node {node}: error: {l}", file.display());
            }
            eprintln!(
                "twinwall: {} lint finding(s) are errors with --strict",
                lints.len()
            );
            Err(Reported(format!("{} lint errors", lints.len())).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}: node {node}", file.display()))),
    }
}
