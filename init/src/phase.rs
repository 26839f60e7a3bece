//! The boot as an ordered list of named phases, each timed and logged with its duration.

use std::time::Instant;

use serde::Serialize;

use crate::status::PhaseReport;

/// The boot phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// /proc, /sys, /dev, /run, /tmp; the kernel command line.
    Early,
    /// finit_module of the build-time module list.
    Modules,
    /// Partitions by GPT label; slot root; config partition.
    Storage,
    /// After the switch into a slot: the root's own (full) module list — NICs and
    /// netfilter, which the initramfs does not carry.
    RootModules,
    /// `twinwall.install=DISK`: lay out DISK from the running slot (`twinwall install`),
    /// then power off instead of starting the services.
    Install,
    /// Node identity and bundle verification (or fail-closed).
    Trust,
    /// Links, addresses, router sysctls.
    Network,
    /// The supervised services.
    Services,
    /// Once the services are up: the slot's modules no service needs to get ready
    /// (links and tunnels the config does not use, conntrack helpers, queue/log).
    LateModules,
    /// Mark the boot slot good.
    Health,
}

impl Phase {
    /// Every phase in boot order.
    pub const ALL: [Phase; 10] = [
        Phase::Early,
        Phase::Modules,
        Phase::Storage,
        Phase::RootModules,
        Phase::Install,
        Phase::Trust,
        Phase::Network,
        Phase::Services,
        Phase::LateModules,
        Phase::Health,
    ];

    /// The phase's name as logged.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Early => "early",
            Phase::Modules => "modules",
            Phase::Storage => "storage",
            Phase::RootModules => "root-modules",
            Phase::Install => "install",
            Phase::Trust => "trust",
            Phase::Network => "network",
            Phase::Services => "services",
            Phase::LateModules => "late-modules",
            Phase::Health => "health",
        }
    }
}

/// How a phase ended, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; what was done.
    Ok(String),
    /// Not needed in this boot mode; why.
    Skipped(String),
    /// Finished with a problem that does not stop the boot (fail-closed, a sysctl).
    Degraded(String),
}

/// Runs one phase, logs its duration and returns its report along with its value.
pub fn run<T, E: std::fmt::Display>(
    phase: Phase,
    f: impl FnOnce() -> Result<(T, Outcome), E>,
) -> (PhaseReport, Result<T, E>) {
    let start = Instant::now();
    tracing::info!(phase = phase.name(), "phase start");
    let result = f();
    let duration = start.elapsed();
    let duration_us = duration.as_micros() as u64;
    let (res, detail) = match &result {
        Ok((_, Outcome::Ok(d))) => ("ok", d.clone()),
        Ok((_, Outcome::Skipped(d))) => ("skipped", d.clone()),
        Ok((_, Outcome::Degraded(d))) => ("degraded", d.clone()),
        Err(e) => ("failed", e.to_string()),
    };
    if res == "failed" {
        tracing::error!(phase = phase.name(), duration_us, error = %detail, "phase failed");
    } else {
        tracing::info!(phase = phase.name(), duration_us, result = res, detail = %detail, "phase done");
    }
    let report = PhaseReport {
        name: phase.name().to_string(),
        duration_us,
        result: res.to_string(),
        detail,
    };
    (report, result.map(|(v, _)| v))
}
