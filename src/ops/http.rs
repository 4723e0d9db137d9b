//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (readiness),
//! `/startupz` (initialized once) and `/status` (JSON), all answered from the [`Monitor`]
//! without touching MongoDB.

use crate::ops::metrics::Monitor;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn router(monitor: Arc<Monitor>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/startupz", get(startupz))
        .route("/status", get(status))
        .with_state(monitor)
}

async fn metrics(State(m): State<Arc<Monitor>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        m.render(),
    )
}

fn verdict(ok: bool, problems: Vec<String>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({"ok": ok, "problems": problems})),
    )
}

async fn healthz(State(m): State<Arc<Monitor>>) -> impl IntoResponse {
    let (ok, problems) = m.liveness();
    verdict(ok, problems)
}

async fn readyz(State(m): State<Arc<Monitor>>) -> impl IntoResponse {
    let (ok, problems) = m.readiness();
    verdict(ok, problems)
}

async fn startupz(State(m): State<Arc<Monitor>>) -> impl IntoResponse {
    let (ok, problems) = m.startup();
    verdict(ok, problems)
}

async fn status(State(m): State<Arc<Monitor>>) -> impl IntoResponse {
    axum::Json(m.status())
}

/// Binds the endpoint; returns the bound address and the serving future, which ends on
/// `shutdown`.
pub async fn bind(
    address: std::net::SocketAddr,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    let serve = async move {
        let result = axum::serve(listener, router(monitor))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    };
    Ok((local, serve))
}

/// Serves the endpoint for workers with these counters, and polls the server for the figures
/// that need a query; both stop with `shutdown`. Returns the monitor and the bound address.
pub async fn serve(
    config: &crate::config::Config,
    client: &mongodb::Client,
    workers: Vec<(String, Arc<crate::ops::stats::ProjectionStats>)>,
    shutdown: &CancellationToken,
) -> std::io::Result<(Arc<Monitor>, std::net::SocketAddr)> {
    let monitor = Monitor::new(config, client, workers);
    let (address, serving) = bind(config.http.address, monitor.clone(), shutdown.clone()).await?;
    tokio::spawn(serving);
    tokio::spawn(monitor.clone().poll(client.clone(), shutdown.clone()));
    tracing::info!(%address, "serving /metrics, /healthz, /readyz, /startupz and /status");
    Ok((monitor, address))
}
