//! The HTTP contract: `POST /mutate` (AdmissionReview in, AdmissionReview out), 404 elsewhere,
//! 413 over 4 MiB, 400 with a one-line reason for bodies that are not an AdmissionReview, 503 at
//! once while `--max-in-flight` requests are being handled, 408 for a request not read and
//! answered within `--request-timeout`.
//!
//! The handler decodes, asks the image resolver about images the pod does not spell out, calls
//! the pure planner and encodes. A pod the webhook cannot handle is admitted unchanged with a
//! warning: the webhook never blocks a pod on its own error.
use super::decide::{self, Config, Plan, Scope};
use super::events::{self, EventSink, Notice, Offered};
use super::review::{self, BadReview, PodObject, Review};
use super::sources::Sources;
use crate::image::{ImageIndex, ImageResolver};
use crate::metrics::Metrics;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State, rejection::BytesRejection};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::admission::AdmissionResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{Instrument, field};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long the handler waits for the image resolver before planning without its answers, unless
/// set with [`AppState::with_resolve_timeout`] (the webhook uses `--lookup-timeout` +
/// [`RESOLVE_GRACE`]: the registry resolver answers each image within `--lookup-timeout` itself,
/// so this bound only catches a resolver that does not).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Added to `--lookup-timeout` for the handler's own bound on the resolver.
pub const RESOLVE_GRACE: Duration = Duration::from_millis(500);

/// Distinct `namespace` label values at most; later namespaces are counted as [`OTHER_NAMESPACE`].
pub const MAX_NAMESPACE_LABELS: usize = 2000;
/// `namespace` label of requests from namespaces past [`MAX_NAMESPACE_LABELS`] or with a name no
/// namespace can have (never a namespace name: `_` is not allowed in one).
pub const OTHER_NAMESPACE: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    result: &'static str,
    mode: &'static str,
    reason: &'static str,
    namespace: String,
}

/// Values of the `namespace` label. The API server only sends pods of governed namespaces, so
/// their number is bounded by the cluster's; this cap also bounds what a client that is not the
/// API server could make up (without `--client-ca-file` anyone who reaches the Service can post
/// a review).
#[derive(Debug)]
pub struct NamespaceLabel {
    cap: usize,
    seen: Mutex<HashSet<String>>,
}

impl NamespaceLabel {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for a request from `namespace` (empty: not known, e.g. an unreadable body).
    pub fn value(&self, namespace: &str) -> String {
        if namespace.is_empty() {
            return String::new();
        }
        if !is_dns_label(namespace) {
            return OTHER_NAMESPACE.to_string();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(namespace) {
            return namespace.to_string();
        }
        if seen.len() < self.cap {
            seen.insert(namespace.to_string());
            return namespace.to_string();
        }
        OTHER_NAMESPACE.to_string()
    }
}

/// An RFC 1123 label, what every namespace name is.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The webhook's metric families.
#[derive(Clone)]
pub struct WebhookMetrics {
    requests: Family<RequestLabels, Counter>,
    namespaces: Arc<NamespaceLabel>,
    events: Family<ResultLabel, Counter>,
    duration: Histogram,
    cert_reloads: Family<ResultLabel, Counter>,
    cert_expiry: Gauge,
    policies: Gauge,
    image_volumes: Gauge,
    connections_refused: Counter,
}

impl WebhookMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let m = Self {
            requests: Family::default(),
            namespaces: Arc::new(NamespaceLabel::new(MAX_NAMESPACE_LABELS)),
            events: Family::default(),
            // 50 µs .. ~3.3 s
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 2.0, 17,
            )),
            cert_reloads: Family::default(),
            cert_expiry: Gauge::default(),
            policies: Gauge::default(),
            image_volumes: Gauge::default(),
            connections_refused: Counter::default(),
        };
        metrics.register(|r| {
            r.register(
                "reaper_webhook_requests",
                "Admission requests by result (inject, share, audit, skipped, ignored, allowed, error, not_synced, invalid, too_large, overloaded, timeout), requested mode, skip or fallback reason (none otherwise) and namespace",
                m.requests.clone(),
            );
            r.register(
                "reaper_webhook_events",
                "Events about skipped and fallen-back pods by result (sent, error, suppressed: one went out for that owner and reason within the interval, dropped: queue full)",
                m.events.clone(),
            );
            r.register(
                "reaper_webhook_request_duration_seconds",
                "Time to answer an admission request",
                m.duration.clone(),
            );
            r.register(
                "reaper_webhook_certificate_reloads",
                "TLS certificate pair loads by result (success, error)",
                m.cert_reloads.clone(),
            );
            r.register(
                "reaper_webhook_certificate_expiry_timestamp_seconds",
                "notAfter of the serving certificate in use (Unix seconds)",
                m.cert_expiry.clone(),
            );
            r.register(
                "reaper_webhook_policies",
                "ReaperPolicies known to the webhook",
                m.policies.clone(),
            );
            r.register(
                "reaper_webhook_image_volumes_supported",
                "1 when auto mounts the reaper image as an image volume (--image-volumes detected or true), else 0",
                m.image_volumes.clone(),
            );
            r.register(
                "reaper_webhook_connections_refused",
                "Connections closed on accept because --max-connections were open",
                m.connections_refused.clone(),
            );
        });
        m
    }

    /// Record a certificate load.
    pub fn cert_loaded(&self, result: Result<Option<i64>, &super::tls::PairError>) {
        let label = match result {
            Ok(expiry) => {
                if let Some(e) = expiry {
                    self.cert_expiry.set(e);
                }
                "success"
            }
            Err(_) => "error",
        };
        self.cert_reloads
            .get_or_create(&ResultLabel { result: label })
            .inc();
    }

    /// Count a connection closed because the connection cap was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn set_policies(&self, n: usize) {
        self.policies.set(n as i64);
    }

    /// Whether `auto` uses image volumes now (see `super::capability`).
    pub fn set_image_volumes(&self, supported: bool) {
        self.image_volumes.set(i64::from(supported));
    }

    /// Count an Event's fate (`sent`, `error`, `suppressed`, `dropped`).
    pub fn event(&self, result: &'static str) {
        self.events.get_or_create(&ResultLabel { result }).inc();
    }

    fn observe(&self, a: Observed<'_>, elapsed: Duration) {
        let labels = RequestLabels {
            result: a.result,
            mode: a.mode,
            reason: a.reason,
            namespace: self.namespaces.value(a.namespace),
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The labels of one answered request.
#[derive(Clone, Copy, Debug)]
struct Observed<'a> {
    result: &'static str,
    mode: &'static str,
    reason: &'static str,
    namespace: &'a str,
}

impl Observed<'static> {
    /// A request refused or failed before its body was read.
    fn unread(result: &'static str) -> Self {
        Self {
            result,
            mode: "none",
            reason: "none",
            namespace: "",
        }
    }
}

/// Everything a request needs, shared by all connections.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    sources: Sources,
    resolver: Arc<dyn ImageResolver>,
    resolve_timeout: Duration,
    metrics: WebhookMetrics,
    in_flight: Arc<tokio::sync::Semaphore>,
    request_timeout: Duration,
    events: Option<EventSink>,
}

impl AppState {
    pub fn new(
        config: Config,
        sources: Sources,
        resolver: Arc<dyn ImageResolver>,
        metrics: WebhookMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                sources,
                resolver,
                resolve_timeout: RESOLVE_TIMEOUT,
                metrics,
                in_flight: Arc::new(tokio::sync::Semaphore::new(
                    super::exposure::Args::default().max_in_flight,
                )),
                request_timeout: super::exposure::Args::default().request_timeout,
                events: None,
            }),
        }
    }

    /// Bound image resolution by `timeout` instead of [`RESOLVE_TIMEOUT`].
    pub fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.resolve_timeout = timeout;
        }
        self
    }

    /// Offer the Events of skipped and fallen-back pods to `sink` (none without).
    pub fn with_events(mut self, sink: EventSink) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.events = Some(sink);
        }
        self
    }

    /// At most `max_in_flight` requests at once; each read and answered within
    /// `request_timeout`.
    pub fn with_limits(mut self, max_in_flight: usize, request_timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
            inner.request_timeout = request_timeout;
        }
        self
    }
}

/// `POST /mutate`; everything else 404; all of it behind [`bounded`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: POST /mutate\n") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), bounded))
        .with_state(state)
}

/// Refuses at once beyond the in-flight cap (a queue would only move the wait into the API
/// server's timeout), and bounds reading the body and answering by the request timeout.
async fn bounded(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let s = &state.inner;
    let started = Instant::now();
    let Ok(_permit) = s.in_flight.clone().try_acquire_owned() else {
        s.metrics
            .observe(Observed::unread("overloaded"), started.elapsed());
        tracing::warn!("admission request refused: --max-in-flight requests in progress");
        let mut r = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many admission requests in progress\n".into(),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            s.metrics
                .observe(Observed::unread("timeout"), started.elapsed());
            tracing::warn!(timeout = ?s.request_timeout, "admission request not read and answered in time");
            plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request not read and answered within {:?}\n",
                    s.request_timeout
                ),
            )
        }
    }
}

/// The answer to one admission request.
pub struct Answer {
    /// JSON AdmissionReview.
    pub body: Vec<u8>,
    /// `result` label.
    pub result: &'static str,
    /// `mode` label.
    pub mode: &'static str,
    /// `reason` label: why the pod was skipped or how its protection fell back, else `none`.
    pub reason: &'static str,
    pub plan: Option<Plan>,
    /// The Event this admission deserves (see [`events::notice`]).
    pub notice: Option<Notice>,
}

/// Decode + plan + encode with no I/O and no image resolution (fuzzing, the benchmark's floor).
pub fn answer_sync(body: &[u8], config: &Config, sources: &Sources) -> Result<Answer, BadReview> {
    let review = review::decode(body)?;
    Ok(respond(review, config, sources, &ImageIndex::default()))
}

/// Plan a decoded request and encode the response.
pub fn respond(review: Review, config: &Config, sources: &Sources, images: &ImageIndex) -> Answer {
    let mut response = AdmissionResponse::from(&review.request);
    let pod = match review.pod {
        PodObject::Pod(pod) => pod,
        PodObject::NotApplicable => {
            return Answer {
                body: review::encode(&response),
                result: "allowed",
                mode: "none",
                reason: "none",
                plan: None,
                notice: None,
            };
        }
        PodObject::Undecodable(why) => {
            response.warnings = Some(vec![format!(
                "reaper: pod not mutated, its spec could not be read: {why}"
            )]);
            return Answer {
                body: review::encode(&response),
                result: "error",
                mode: "none",
                reason: "none",
                plan: None,
                notice: None,
            };
        }
    };
    if !sources.is_synced() {
        // Planning against an incomplete policy list could apply the wrong mode.
        response.warnings = Some(vec![
            "reaper: pod not mutated, the webhook has not synced its policies yet".to_string(),
        ]);
        return Answer {
            body: review::encode(&response),
            result: "not_synced",
            mode: "none",
            reason: "none",
            plan: None,
            notice: None,
        };
    }
    let namespace = review
        .request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default();
    let ns = sources.namespace_labels(namespace);
    let policies = sources.policies();
    let scope = Scope {
        namespace,
        namespace_labels: &ns.labels,
    };
    let mut plan = decide::plan(&pod, scope, &policies, images, config);
    if let Some(w) = ns.warning
        && !matches!(plan.outcome, decide::Outcome::Ignored(_))
    {
        plan.warnings.insert(0, w);
    }
    let patch = plan.patch();
    if !patch.0.is_empty() {
        response = match response.with_patch(patch) {
            Ok(r) => r,
            // Cannot happen for a Vec of JSON values; admit unchanged rather than fail the pod.
            Err(e) => {
                let mut r = AdmissionResponse::from(&review.request);
                r.warnings = Some(vec![format!("reaper: pod not mutated: {e}")]);
                r
            }
        };
    }
    if !plan.warnings.is_empty() {
        response.warnings = Some(plan.warnings.clone());
    }
    let notice = events::notice(&pod, namespace, &plan, review.request.dry_run);
    Answer {
        body: review::encode(&response),
        result: plan.result_label(),
        mode: plan.mode.map_or("none", |m| m.as_str()),
        reason: plan.reason_label(),
        plan: Some(plan),
        notice,
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn mutate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let s = &state.inner;
    let span = tracing::info_span!(
        "admission",
        uid = field::Empty,
        namespace = field::Empty,
        pod = field::Empty,
        result = field::Empty,
    );
    async move {
        let body = match body {
            Ok(b) => b,
            Err(rejection) => {
                let status = rejection.status();
                let (result, text) = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ("too_large", format!("request body exceeds {} MiB\n", MAX_BODY_BYTES >> 20))
                } else {
                    ("invalid", format!("cannot read request body: {}\n", rejection.body_text()))
                };
                tracing::Span::current().record("result", result);
                tracing::warn!("{}", text.trim_end());
                s.metrics.observe(Observed::unread(result), started.elapsed());
                return plain(status, text);
            }
        };
        let review = match review::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::Span::current().record("result", "invalid");
                tracing::warn!(error = %e, "bad AdmissionReview");
                s.metrics.observe(Observed::unread("invalid"), started.elapsed());
                return plain(StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        let span = tracing::Span::current();
        let request_namespace = review.request.namespace.clone().unwrap_or_default();
        span.record("uid", review.request.uid.as_str());
        if let Some(ns) = &review.request.namespace {
            span.record("namespace", ns.as_str());
        }
        let mut images = ImageIndex::default();
        if let PodObject::Pod(pod) = &review.pod {
            let name = pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
                .unwrap_or_default();
            span.record("pod", name.as_str());
            let namespace = review.request.namespace.as_deref().unwrap_or_default();
            let ns = s.sources.namespace_labels(namespace);
            let policies = s.sources.policies();
            let scope = Scope {
                namespace,
                namespace_labels: &ns.labels,
            };
            let wanted = decide::images_to_resolve(pod, scope, &policies, &s.config);
            if !wanted.is_empty() && s.sources.is_synced() {
                match tokio::time::timeout(
                    s.resolve_timeout,
                    s.resolver.resolve(pod, namespace, &wanted),
                )
                .await
                {
                    Ok(found) => images = found,
                    Err(_) => tracing::warn!(images = ?wanted, "image resolution timed out; planning without it"),
                }
            }
        }
        let answer = respond(review, &s.config, &s.sources, &images);
        span.record("result", answer.result);
        match &answer.plan {
            Some(p) if !matches!(p.outcome, decide::Outcome::Ignored(_)) => tracing::info!(
                annotation = p.annotation().as_deref().unwrap_or_default(),
                policy = p.policy.as_deref().unwrap_or_default(),
                warnings = p.warnings.len(),
                "admitted"
            ),
            _ => tracing::debug!("admitted unchanged"),
        }
        if let (Some(sink), Some(notice)) = (&s.events, answer.notice) {
            let reason = notice.reason;
            match sink.offer(notice, Instant::now()) {
                Offered::Queued => tracing::debug!(reason, "Event queued"),
                other => {
                    s.metrics.event(other.as_str());
                    if other == Offered::Dropped {
                        tracing::warn!(reason, "Event dropped: the queue of Events to send is full");
                    }
                }
            }
        }
        s.metrics.observe(
            Observed {
                result: answer.result,
                mode: answer.mode,
                reason: answer.reason,
                namespace: &request_namespace,
            },
            started.elapsed(),
        );
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            answer.body,
        )
            .into_response()
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &[u8] =
        include_bytes!("../../tests/fixtures/pods/reviews/deployment-3-containers.json");

    #[test]
    fn namespace_label_values_are_bounded() {
        let l = NamespaceLabel::new(2);
        assert_eq!(l.value(""), "");
        assert_eq!(l.value("apps"), "apps");
        assert_eq!(l.value("team-a"), "team-a");
        // Full: known ones keep their series, new ones share one.
        assert_eq!(l.value("team-b"), OTHER_NAMESPACE);
        assert_eq!(l.value("apps"), "apps");
        // No namespace has such a name (and it takes no room).
        let l = NamespaceLabel::new(1);
        for bad in ["Apps", "a_b", "-a", "a-", &"a".repeat(64), "a\"}"] {
            assert_eq!(l.value(bad), OTHER_NAMESPACE, "{bad}");
        }
        assert_eq!(l.value(&"a".repeat(63)), "a".repeat(63));
    }

    #[test]
    fn answers_carry_the_reason_and_the_event() {
        let config = Config::new("r:1");
        let sources = Sources::fixed(Default::default());
        let a = answer_sync(REVIEW, &config, &sources).unwrap();
        assert_eq!((a.result, a.reason), ("inject", "none"));
        assert_eq!(a.notice, None);
        // Commands removed: the argvs are unknown, auto shares; the ReplicaSet hears of it.
        let mut v: serde_json::Value = serde_json::from_slice(REVIEW).unwrap();
        for c in v["request"]["object"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
        {
            c.as_object_mut().unwrap().remove("command");
        }
        let body = serde_json::to_vec(&v).unwrap();
        let a = answer_sync(&body, &config, &sources).unwrap();
        assert_eq!((a.result, a.reason), ("share", "auto-share"));
        let n = a.notice.expect("a notice");
        assert_eq!(n.regarding.name.as_deref(), Some("web-7d9c8b6f5"));
        v["request"]["dryRun"] = serde_json::json!(true);
        let body = serde_json::to_vec(&v).unwrap();
        let a = answer_sync(&body, &config, &sources).unwrap();
        assert_eq!((a.result, a.reason), ("share", "auto-share"));
        assert_eq!(a.notice, None, "dry run");
    }

    #[test]
    fn nothing_is_mutated_before_policies_are_synced() {
        let config = Config::new("r:1");
        let a = answer_sync(REVIEW, &config, &Sources::unsynced()).unwrap();
        assert_eq!(a.result, "not_synced");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        assert!(
            v["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("not synced")
        );
        let a = answer_sync(REVIEW, &config, &Sources::fixed(Default::default())).unwrap();
        assert_eq!(a.result, "inject");
    }
}
