//! `twinwall push BUNDLE --to HOST[:PORT]`: uploads a signed config bundle to a node,
//! which stages it, has its peer stage and validate it too, then both apply it.
//!
//! Commit-confirm: the node reverts by itself unless the push is confirmed within the
//! window. Without `--confirm-within` this command confirms at once after the apply
//! succeeded — if the new config cut this host off, the confirm cannot arrive and the
//! pair reverts. With `--confirm-within D` the operator checks first and confirms with
//! `twinwall push BUNDLE --to HOST --confirm`.
//!
//! The node answers the upload once the new ruleset is enforced in its kernel and in its
//! peer's (both `nft -f` transactions done) or the peer is marked pending; the command
//! prints that time (`enforced ... after N ms`) and then the time of the confirm.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use twinwall_mgmt::client::{self, bytes_body};

/// Arguments of `twinwall push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The signed config bundle.
    bundle: PathBuf,
    /// The node's management address, `HOST[:PORT]` (port 9780 by default).
    #[arg(long)]
    to: String,
    /// Revert unless confirmed within this time (e.g. `120s`, `5m`); the confirm is then
    /// up to you (`--confirm`).
    #[arg(long, value_parser = humantime::parse_duration)]
    confirm_within: Option<Duration>,
    /// Only confirm a push made with `--confirm-within`.
    #[arg(long, conflicts_with = "confirm_within")]
    confirm: bool,
    /// Do not forward to the peer (this node only).
    #[arg(long)]
    no_peer: bool,
    /// Print the node's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Window used when this command confirms by itself.
const AUTO_WINDOW: Duration = Duration::from_secs(30);

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

pub(crate) fn fail(what: &str, a: &client::Answer) -> anyhow::Error {
    let code = a.json()["code"].as_str().unwrap_or_default().to_string();
    let code = if code.is_empty() {
        String::new()
    } else {
        format!(" [{code}]")
    };
    anyhow::anyhow!("{what}: HTTP {}{code}: {}", a.status, a.reason())
}

/// Runs `twinwall push`.
pub fn run(a: PushArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.bundle)
        .with_context(|| format!("cannot read bundle {}", a.bundle.display()))?;
    runtime()?.block_on(async move {
        let addr = client::resolve(&a.to, twinwall_mgmt::DEFAULT_PORT).await?;
        let t = Duration::from_secs(60);
        let fwd = if a.no_peer { "0" } else { "1" };
        if a.confirm {
            let ans = client::request(
                addr,
                "POST",
                &format!("/confirm?forward={fwd}"),
                bytes_body(bytes),
                t,
            )
            .await?;
            if !ans.ok() {
                return Err(fail("confirm refused", &ans));
            }
            return print(&a, &ans.json(), "confirmed");
        }
        let window = a.confirm_within.unwrap_or(AUTO_WINDOW);
        let path = format!(
            "/config?forward={fwd}&confirm_within={}",
            window.as_secs().max(1)
        );
        // One connection for the push and its confirm.
        let start = Instant::now();
        let mut conn = client::Conn::open(addr, t).await?;
        let ans = conn
            .request("POST", &path, bytes_body(bytes.clone()), t)
            .await?;
        if !ans.ok() {
            return Err(fail(&format!("{} refused the bundle", a.to), &ans));
        }
        // The node answers once the new ruleset is in its kernel and in its peer's (or
        // the peer is marked pending): this is upload-to-enforced as the operator sees it.
        let enforced = start.elapsed();
        let mut pushed = ans.json();
        pushed["client_ms"] = json!({"enforced": ms(enforced)});
        if a.confirm_within.is_some() {
            print(&a, &pushed, "applied")?;
            peer_failed(&pushed)?;
            eprintln!(
                "twinwall: confirm within {} s: twinwall push {} --to {} --confirm",
                window.as_secs(),
                a.bundle.display(),
                a.to
            );
            return Ok(());
        }
        let c = if conn.usable() {
            conn.request(
                "POST",
                &format!("/confirm?forward={fwd}"),
                bytes_body(bytes),
                t,
            )
            .await
        } else {
            client::request(
                addr,
                "POST",
                &format!("/confirm?forward={fwd}"),
                bytes_body(bytes),
                t,
            )
            .await
        };
        pushed["client_ms"]["confirmed"] = json!(ms(start.elapsed()));
        match c {
            Ok(c) if c.ok() => {
                print(&a, &pushed, "applied and confirmed")?;
                peer_failed(&pushed)
            }
            Ok(c) => bail!(
                "{}; the node reverts by itself within {} s",
                fail("confirm refused", &c),
                window.as_secs()
            ),
            Err(e) => bail!(
                "cannot confirm ({e}); the node reverts by itself within {} s",
                window.as_secs()
            ),
        }
    })
}

fn ms(d: Duration) -> f64 {
    twinwall_mgmt::timing::ms(d)
}

/// A peer that refused phase 2 is a failure of the push (the pair now differs); a peer
/// that was unreachable is not (it gets the bundle when it returns).
fn peer_failed(v: &Value) -> anyhow::Result<()> {
    if v["peer"]["state"] == "failed" {
        bail!(
            "the peer refused to apply the bundle ({}): {}; the pair now runs different versions",
            v["peer"]["status"],
            v["peer"]["error"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn print(a: &PushArgs, v: &Value, what: &str) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let node = v["node"].as_str().unwrap_or("?");
    let version = &v["version"];
    let version = if version.is_null() {
        &v["confirmed"]
    } else {
        version
    };
    println!("{node}: config version {version} {what}");
    if let Some(ap) = v.get("applied").filter(|x| !x.is_null()) {
        let restarted: Vec<&str> = ap["restarted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  ruleset {}; restarted: {}",
            if ap["plan"]["ruleset"] == Value::Bool(true) {
                "replaced"
            } else {
                "unchanged"
            },
            if restarted.is_empty() {
                "none".to_string()
            } else {
                restarted.join(", ")
            }
        );
        for w in ap["warnings"].as_array().into_iter().flatten() {
            println!("  warning: {}", w.as_str().unwrap_or_default());
        }
    }
    if let Some(e) = v["client_ms"]["enforced"].as_f64() {
        let both = if v["peer"]["state"] == "applied" {
            "on both nodes"
        } else {
            "on this node"
        };
        match v["client_ms"]["confirmed"].as_f64() {
            Some(c) => println!("  enforced {both} after {e} ms, confirmed after {c} ms"),
            None => println!("  enforced {both} after {e} ms"),
        }
    }
    match &v["peer"] {
        Value::Null => {}
        p => println!(
            "  peer: {}",
            p["state"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p.to_string())
        ),
    }
    Ok(())
}
