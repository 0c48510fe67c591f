//! The HTTP API (placeholder until the API work lands): health only.

use axum::{Json, Router, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::state::Shared;

pub fn router(shared: Shared) -> Router {
    Router::new().route(
        "/healthz",
        get(move || {
            let snap = shared.snapshot.borrow().clone();
            async move {
                Json(serde_json::json!({
                    "status": "ok",
                    "node": snap.site.server(snap.node).id,
                    "booting": snap.booting,
                }))
            }
        }),
    )
}

pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
