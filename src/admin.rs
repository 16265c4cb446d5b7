//! The plain-HTTP admin port every component serves: `/metrics`, `/livez`, `/readyz`.
use crate::metrics::Metrics;
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness shared between a component and its admin server.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Liveness: ok until a supervised task of the component stopped (see `crate::component`).
#[derive(Clone, Default)]
pub struct Liveness(Arc<std::sync::Mutex<Option<String>>>);

impl Liveness {
    /// Marks the process dead for `/livez`, with what happened.
    pub fn fail(&self, why: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
    pub fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ready: Readiness,
    live: Liveness,
}

/// The admin router (exposed for tests through `tower::ServiceExt::oneshot`).
pub fn router(metrics: Metrics, ready: Readiness, live: Liveness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            ready,
            live,
        })
}

async fn livez(State(s): State<AdminState>) -> impl IntoResponse {
    match s.live.failure() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String) {
        let res = app
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_flag() {
        let ready = Readiness::default();
        let live = Liveness::default();
        let app = router(Metrics::new(), ready.clone(), live.clone());
        assert_eq!(
            get_path(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_path(app.clone(), "/livez").await.0, StatusCode::OK);
        ready.set(true);
        assert_eq!(get_path(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_path(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("# EOF\n"));
        live.fail("task scan loop ended".into());
        let (status, body) = get_path(app, "/livez").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "task scan loop ended\n");
    }
}
