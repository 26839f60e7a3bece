//! The HTTP face of the management API (axum on hyper 1): routes, body-size limits, the
//! rate limit and request counting. Every handler translates into one [`Node`] call.
//!
//! | route | body | what |
//! |---|---|---|
//! | `GET /status` | – | the node's status (JSON) |
//! | `GET /metrics` | – | Prometheus text |
//! | `POST /config[?confirm_within=S&forward=0&phase=stage\|commit\|abort]` | config bundle | push |
//! | `POST /update[?reboot=1]` | os-update bundle, streamed | A/B update |
//! | `POST /confirm[?forward=0]` | the pushed config bundle | close the window |
//! | `POST /rollback[?what=os]` | the config bundle in force (proof) | go back |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::error::MgmtError;
use crate::node::{Node, PushOptions};

/// A token bucket shared by all clients. Hand-written (15 lines) rather than `governor`:
/// one global bucket is all the API needs.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `rate` tokens a second, at most `burst` saved up.
    pub fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            state: Mutex::new((f64::from(burst.max(1)), Instant::now())),
        }
    }

    /// Takes a token at `now`; false when the bucket is empty.
    pub fn take(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct App {
    node: Arc<Node>,
    bucket: Arc<Bucket>,
}

impl IntoResponse for MgmtError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            axum::Json(json!({"error": self.to_string(), "code": self.code()})),
        )
            .into_response()
    }
}

type Answer = Result<axum::Json<Value>, MgmtError>;

/// The router of the API.
pub fn router(node: Arc<Node>) -> Router {
    let limits = node.settings.limits.clone();
    let app = App {
        bucket: Arc::new(Bucket::new(limits.rate_per_sec, limits.burst)),
        node,
    };
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/config", post(config))
        .route("/update", post(update))
        .route("/confirm", post(confirm))
        .route("/rollback", post(rollback))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Rate limit and request counting around every route.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let endpoint = req.uri().path().to_string();
    if !app.bucket.take(Instant::now()) {
        app.node.count_rate_limited();
        app.node.count_request(&endpoint, 429);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(
                json!({"error": "rate limit exceeded; retry in a second", "code": "rate_limited"}),
            ),
        )
            .into_response();
    }
    let resp = next.run(req).await;
    app.node.count_request(&endpoint, resp.status().as_u16());
    resp
}

/// Reads a whole body up to `limit` bytes. Past the limit the rest is read and dropped
/// (up to four times the limit) so that the client receives the 413 instead of a reset
/// connection; a client sending even more is cut off.
async fn body_bytes(body: Body, limit: u64) -> Result<Bytes, MgmtError> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| MgmtError::BadRequest(format!("reading the request body: {e}")))?;
        seen += chunk.len() as u64;
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit.saturating_mul(4) {
            break;
        }
    }
    if seen > limit {
        return Err(MgmtError::TooLarge { limit });
    }
    Ok(buf.freeze())
}

async fn status(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Answer {
    if q.get("local").is_some_and(|v| v == "1") {
        return Ok(axum::Json(json!({"mgmt": app.node.snapshot()})));
    }
    let node = app.node.clone();
    let v = tokio::task::spawn_blocking(move || node.node_status())
        .await
        .map_err(|e| MgmtError::Unavailable(e.to_string()))?;
    Ok(axum::Json(v))
}

async fn metrics(State(app): State<App>) -> Result<Response, MgmtError> {
    let node = app.node.clone();
    let text = tokio::task::spawn_blocking(move || {
        let st = node.node_status();
        node.metrics(&st)
    })
    .await
    .map_err(|e| MgmtError::Unavailable(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn flag(q: &HashMap<String, String>, key: &str, default: bool) -> bool {
    q.get(key).map_or(default, |v| v == "1" || v == "true")
}

fn window(app: &App, q: &HashMap<String, String>) -> Result<Option<Duration>, MgmtError> {
    let Some(s) = q.get("confirm_within") else {
        return Ok(None);
    };
    let secs: u64 = s.parse().map_err(|_| {
        MgmtError::BadRequest(format!("confirm_within={s:?} is not a number of seconds"))
    })?;
    let w = Duration::from_secs(secs);
    let max = app.node.settings.limits.max_confirm_window;
    if secs == 0 || w > max {
        return Err(MgmtError::BadRequest(format!(
            "confirm_within={secs} is out of range 1..={}",
            max.as_secs()
        )));
    }
    Ok(Some(w))
}

async fn config(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Answer {
    let bytes = body_bytes(body, app.node.settings.limits.max_config_bundle).await?;
    let w = window(&app, &q)?;
    let v = match q.get("phase").map(String::as_str) {
        None | Some("full") => {
            let opts = PushOptions {
                confirm_within: w,
                forward: flag(&q, "forward", true),
            };
            app.node.push(bytes, opts).await?
        }
        Some("stage") => app.node.peer_stage(bytes).await?,
        Some("commit") => app.node.peer_commit(bytes, w).await?,
        Some("abort") => app.node.peer_abort().await?,
        Some(other) => {
            return Err(MgmtError::BadRequest(format!(
                "phase={other:?}: expected stage, commit or abort"
            )));
        }
    };
    Ok(axum::Json(v))
}

async fn confirm(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Answer {
    let bytes = body_bytes(body, app.node.settings.limits.max_config_bundle).await?;
    Ok(axum::Json(
        app.node.confirm(bytes, flag(&q, "forward", true)).await?,
    ))
}

async fn rollback(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Answer {
    let bytes = body_bytes(body, app.node.settings.limits.max_config_bundle).await?;
    let os = match q.get("what").map(String::as_str) {
        None | Some("config") => false,
        Some("os") => true,
        Some(other) => {
            return Err(MgmtError::BadRequest(format!(
                "what={other:?}: expected config or os"
            )));
        }
    };
    let mut v = app.node.rollback(bytes, os).await?;
    if os && flag(&q, "reboot", false) {
        v["reboot"] = reboot_later(&app);
    }
    Ok(axum::Json(v))
}

fn reboot_later(app: &App) -> Value {
    // Answer first, then reboot: the client sees the result.
    let node = app.node.clone();
    match node.reboot_possible() {
        Ok(()) => {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Err(e) = node.reboot() {
                    tracing::error!(error = %e, "reboot failed");
                }
            });
            json!("rebooting")
        }
        Err(e) => json!(format!("not rebooting: {e}")),
    }
}

async fn update(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Answer {
    let limit = app.node.settings.limits.max_update_bundle;
    let stream = http_body_util::Limited::new(body, limit as usize)
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let sync = tokio_util::io::SyncIoBridge::new(reader);
    let report = app.node.update(sync).await?;
    let mut v = json!({"node": app.node.settings.node, "update": report});
    if flag(&q, "reboot", false) {
        v["reboot"] = reboot_later(&app);
    }
    Ok(axum::Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let b = Bucket::new(10, 5);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5, "burst of 5");
        assert!(!b.take(t0));
        // 10 per second: 100 ms buys one more token, never more than the burst
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
    }
}
