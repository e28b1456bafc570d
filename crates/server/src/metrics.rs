//! Prometheus metrics: one recorder for the process (the `metrics` facade with its
//! Prometheus exporter), rendered in the text exposition format at `GET /metrics`.
//! Each function records one thing that happened; names are listed in the README.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::services::events::CellStatus;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of the duration histograms, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Install the process's recorder (once) and return its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is already installed (tests): render an empty one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// The text exposition of every metric.
pub fn render() -> String {
    crate::services::egress::record_server_metrics();
    handle().render()
}

/// Sessions live and sandboxes ready in the pool.
pub fn sessions_live(live: usize, pooled: usize) {
    gauge!("pyxis_sessions_live").set(live as f64);
    gauge!("pyxis_pool_idle").set(pooled as f64);
}

/// Sandboxes ready in the warm pool's lane of `language`.
pub fn pool_lane_idle(language: &'static str, idle: usize) {
    gauge!("pyxis_pool_lane_idle", "language" => language).set(idle as f64);
}

/// A session's sandbox was taken from the pool or made cold.
pub fn session_created(pooled: bool, took: Duration) {
    let source = if pooled { "pooled" } else { "cold" };
    counter!("pyxis_sessions_created_total", "source" => source).increment(1);
    histogram!("pyxis_session_create_seconds", "source" => source).record(took.as_secs_f64());
}

/// A cell ended.
pub fn cell_finished(status: CellStatus, error: Option<&str>, took: Duration, output_bytes: u64) {
    let status = match status {
        CellStatus::Ok => "ok",
        CellStatus::Error => "error",
        CellStatus::Timeout => "timeout",
        CellStatus::Killed => "killed",
    };
    let _ = error;
    counter!("pyxis_cells_total", "status" => status).increment(1);
    histogram!("pyxis_cell_seconds").record(took.as_secs_f64());
    counter!("pyxis_output_bytes_total").increment(output_bytes);
}

/// A queued cell whose caller went away before it started (not run).
pub fn cell_abandoned() {
    counter!("pyxis_cells_abandoned_total").increment(1);
}

/// The OOM killer ended a kernel.
pub fn oom_kill() {
    counter!("pyxis_oom_kills_total").increment(1);
}

/// A cell reached its time limit.
pub fn timeout() {
    counter!("pyxis_timeouts_total").increment(1);
}

/// A kernel was restarted (asked for, or after it died).
pub fn restart() {
    counter!("pyxis_restarts_total").increment(1);
}

/// A file was written into a workspace (upload or import).
pub fn file_in(bytes: u64) {
    counter!("pyxis_files_in_total").increment(1);
    counter!("pyxis_file_bytes_in_total").increment(bytes);
}

/// A file was read out of a workspace.
pub fn file_out(bytes: u64) {
    counter!("pyxis_files_out_total").increment(1);
    counter!("pyxis_file_bytes_out_total").increment(bytes);
}

/// An import of one URL ended.
pub fn import_done(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("pyxis_imports_total", "outcome" => outcome).increment(1);
}

/// An export of one file ended.
pub fn export_done(ok: bool, bytes: u64) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("pyxis_exports_total", "outcome" => outcome).increment(1);
    if ok {
        counter!("pyxis_file_bytes_exported_total").increment(bytes);
    }
}

/// A stream (`sse`, `websocket`) opened; the guard closes it when dropped.
pub fn stream_open(kind: &'static str) -> StreamGuard {
    gauge!("pyxis_streams_open", "kind" => kind).increment(1.0);
    counter!("pyxis_streams_total", "kind" => kind).increment(1);
    StreamGuard(kind)
}

/// Counts an open stream until dropped.
pub struct StreamGuard(&'static str);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        gauge!("pyxis_streams_open", "kind" => self.0).decrement(1.0);
    }
}

/// A connection was accepted (under the caps).
pub fn connection_opened() {
    gauge!("pyxis_connections_open").increment(1.0);
    counter!("pyxis_connections_total").increment(1);
}

/// An accepted connection closed.
pub fn connection_closed() {
    gauge!("pyxis_connections_open").decrement(1.0);
}

/// A connection past a cap (`max_connections`, `max_connections_per_peer`) was answered
/// 503 and closed.
pub fn connection_refused(reason: &'static str) {
    counter!("pyxis_connections_refused_total", "reason" => reason).increment(1);
}

/// A connection was closed by a timeout (`header_timeout`, `keepalive_timeout`,
/// `body_stalled`, `response_not_read`).
pub fn connection_shed(reason: &'static str) {
    counter!("pyxis_connections_shed_total", "reason" => reason).increment(1);
}

/// A tenant's live sessions (and running one-shots).
pub fn tenant_sessions_live(tenant: &str, n: usize) {
    gauge!("pyxis_tenant_sessions_live", "tenant" => tenant.to_string()).set(n as f64);
}

/// A tenant's cell was admitted.
pub fn tenant_cell(tenant: &str) {
    counter!("pyxis_tenant_cells_total", "tenant" => tenant.to_string()).increment(1);
}

/// A tenant's request was refused by one of its limits (`sessions`, `cells_per_minute`,
/// `memory`).
pub fn tenant_limited(tenant: &str, limit: &'static str) {
    counter!("pyxis_tenant_limited_total", "tenant" => tenant.to_string(), "limit" => limit)
        .increment(1);
}

/// The keys file was reloaded (or refused).
pub fn keys_reloaded(ok: bool) {
    let outcome = if ok { "ok" } else { "refused" };
    counter!("pyxis_keys_reloads_total", "outcome" => outcome).increment(1);
}

/// Zygote `index` spawned a kernel.
pub fn zygote_spawned(index: usize) {
    counter!("pyxis_zygote_spawns_total", "zygote" => index.to_string()).increment(1);
}

/// Zygote `index` is serving (`true`) or was lost and is being replaced (`false`).
pub fn zygote_alive(index: usize, alive: bool) {
    gauge!("pyxis_zygote_up", "zygote" => index.to_string()).set(f64::from(u8::from(alive)));
    if !alive {
        counter!("pyxis_zygote_restarts_total", "zygote" => index.to_string()).increment(1);
    }
}
