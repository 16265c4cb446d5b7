//! `admission.k8s.io/v1` AdmissionReview on the wire: a strict decoder that names what is wrong
//! (the 400 reasons) and the response encoder.
//!
//! Requests are decoded into a small envelope of our own first, keeping `request.object` as raw
//! JSON, so malformed input gets a precise reason and non-Pod objects are never parsed. Responses
//! are built with kube's [`AdmissionResponse`]; the patch is written base64-encoded, the encoding
//! the API server documents for `[]byte` fields (kube serialises `Vec<u8>` as a number array).
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, META_API_VERSION_V1, META_KIND, Operation,
};
use kube::core::{DynamicObject, GroupVersionKind, GroupVersionResource, TypeMeta};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why a request body is not an AdmissionReview we can answer (HTTP 400, one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("request body is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("apiVersion is {0:?}, expected \"admission.k8s.io/v1\"")]
    ApiVersion(String),
    #[error("kind is {0:?}, expected \"AdmissionReview\"")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

/// The envelope, generic over how `request.object` is read: as raw JSON (`&RawValue`, any kind)
/// or directly as a pod ([`WirePod`], the one-pass fast path).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<O> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default = "none")]
    request: Option<WireRequest<O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<O> {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    resource: Option<GroupVersionResource>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "none")]
    object: Option<O>,
}

fn none<T>() -> Option<T> {
    None
}

/// A Pod as the webhook reads it: the full `spec`, and of `metadata` only what the planner and
/// the Events use.
/// Skipping `managedFields` (a free-form tree) and `status` halves the decoding time of a typical
/// pod; the patch is still computed against, and applied to, the complete object.
#[derive(Deserialize)]
struct WirePod {
    #[serde(default)]
    metadata: Option<WireMeta>,
    #[serde(default)]
    spec: Option<k8s_openapi::api::core::v1::PodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
    /// Whom an Event about the pod is recorded on (`super::events::regarding`).
    #[serde(default)]
    owner_references: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
}

impl WirePod {
    fn into_pod(self) -> Pod {
        Pod {
            metadata: match self.metadata {
                None => Default::default(),
                Some(m) => k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: m.name,
                    generate_name: m.generate_name,
                    namespace: m.namespace,
                    labels: m.labels,
                    annotations: m.annotations,
                    owner_references: m.owner_references,
                    ..Default::default()
                },
            },
            spec: self.spec,
            status: None,
        }
    }
}

/// Decode a pod object the way [`decode`] does (exposed for tests and benchmarks).
pub fn decode_pod(json: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_str::<WirePod>(json).map(WirePod::into_pod)
}

/// A decoded request: its kube form (without the object) and, for a Pod CREATE, the pod.
#[derive(Debug)]
pub struct Review {
    pub request: AdmissionRequest<DynamicObject>,
    pub pod: PodObject,
}

/// What the request carries, as far as the webhook cares.
#[derive(Debug)]
pub enum PodObject {
    /// A Pod being created.
    Pod(Box<Pod>),
    /// Not a Pod CREATE (other kind, operation or subresource): allowed unchanged.
    NotApplicable,
    /// A Pod CREATE whose object could not be decoded: admitted unchanged with a warning.
    Undecodable(String),
}

/// Decode an AdmissionReview request body.
///
/// One pass in the common case: the review is read with the object decoded straight into a pod.
/// When that fails (another kind, a malformed pod, malformed JSON) it is read again with the
/// object kept raw, which tells a bad review (400) from a pod that cannot be handled (admitted
/// with a warning) and names the problem.
pub fn decode(body: &[u8]) -> Result<Review, BadReview> {
    let text = std::str::from_utf8(body).map_err(|e| BadReview::NotUtf8(e.valid_up_to()))?;
    if let Ok(wire) = serde_json::from_str::<WireReview<WirePod>>(text) {
        return finish(wire, |pod| Ok(pod.into_pod()));
    }
    let wire: WireReview<&RawValue> =
        serde_json::from_str(text).map_err(|e| BadReview::Json(one_line(&e)))?;
    finish(wire, |raw| decode_pod(raw.get()).map_err(|e| one_line(&e)))
}

fn finish<O>(
    wire: WireReview<O>,
    to_pod: impl FnOnce(O) -> Result<Pod, String>,
) -> Result<Review, BadReview> {
    let api_version = wire.api_version.as_deref().unwrap_or_default();
    if api_version != META_API_VERSION_V1 {
        return Err(BadReview::ApiVersion(api_version.to_string()));
    }
    let kind = wire.kind.as_deref().unwrap_or_default();
    if kind != META_KIND {
        return Err(BadReview::Kind(kind.to_string()));
    }
    let req = wire.request.ok_or(BadReview::NoRequest)?;
    let uid = req.uid.filter(|u| !u.is_empty()).ok_or(BadReview::NoUid)?;
    let gvk = req
        .kind
        .unwrap_or_else(|| GroupVersionKind::gvk("", "", ""));
    let operation = match req.operation.as_deref() {
        Some("CREATE") => Some(Operation::Create),
        Some("UPDATE") => Some(Operation::Update),
        Some("DELETE") => Some(Operation::Delete),
        Some("CONNECT") => Some(Operation::Connect),
        _ => None,
    };
    let is_pod_create = gvk.group.is_empty()
        && gvk.version == "v1"
        && gvk.kind == "Pod"
        && operation == Some(Operation::Create)
        && req.sub_resource.as_deref().unwrap_or_default().is_empty();
    let pod = if !is_pod_create {
        PodObject::NotApplicable
    } else {
        match req.object {
            None => PodObject::Undecodable("the request has no object".to_string()),
            Some(object) => match to_pod(object) {
                Ok(pod) => PodObject::Pod(Box::new(pod)),
                Err(e) => PodObject::Undecodable(e),
            },
        }
    };
    let request = AdmissionRequest {
        types: TypeMeta {
            api_version: META_API_VERSION_V1.to_string(),
            kind: META_KIND.to_string(),
        },
        uid,
        kind: gvk,
        resource: req
            .resource
            .unwrap_or_else(|| GroupVersionResource::gvr("", "", "")),
        sub_resource: req.sub_resource,
        request_kind: None,
        request_resource: None,
        request_sub_resource: None,
        name: req.name.unwrap_or_default(),
        namespace: req.namespace,
        // Only the webhook's answer depends on the operation; an unknown one is not applicable.
        operation: operation.unwrap_or(Operation::Connect),
        user_info: Default::default(),
        object: None,
        old_object: None,
        dry_run: req.dry_run.unwrap_or(false),
        options: None,
    };
    Ok(Review { request, pod })
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.lines().next().unwrap_or_default();
    // Error texts echo input; keep the 400 body short.
    s.chars().take(300).collect()
}

/// Serialise a response as the AdmissionReview the API server expects.
pub fn encode(response: &AdmissionResponse) -> Vec<u8> {
    // Serialising plain strings, bools and byte strings into a Vec cannot fail.
    serde_json::to_vec(&Wire(response)).unwrap_or_default()
}

struct Wire<'a>(&'a AdmissionResponse);

impl Serialize for Wire<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut review = s.serialize_struct("AdmissionReview", 3)?;
        review.serialize_field("apiVersion", META_API_VERSION_V1)?;
        review.serialize_field("kind", META_KIND)?;
        review.serialize_field("response", &WireResponse(self.0))?;
        review.end()
    }
}

struct WireResponse<'a>(&'a AdmissionResponse);

impl Serialize for WireResponse<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut out = s.serialize_struct("AdmissionResponse", 6)?;
        out.serialize_field("uid", &r.uid)?;
        out.serialize_field("allowed", &r.allowed)?;
        if !r.allowed {
            out.serialize_field("status", &r.result)?;
        }
        if let Some(patch) = &r.patch {
            out.serialize_field(
                "patch",
                &base64::engine::general_purpose::STANDARD.encode(patch),
            )?;
            out.serialize_field("patchType", "JSONPatch")?;
        }
        if let Some(w) = r.warnings.as_ref().filter(|w| !w.is_empty()) {
            out.serialize_field("warnings", w)?;
        }
        if !r.audit_annotations.is_empty() {
            out.serialize_field("auditAnnotations", &r.audit_annotations)?;
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(request: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#
        )
    }

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"x"}]}}"#;

    fn pod_request(op: &str, object: &str) -> String {
        review(&format!(
            r#"{{"uid":"u-1","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"{op}","namespace":"ns","object":{object}}}"#
        ))
    }

    #[test]
    fn decodes_a_pod_create() {
        let r = decode(pod_request("CREATE", POD).as_bytes()).unwrap();
        assert_eq!(r.request.uid, "u-1");
        assert_eq!(r.request.namespace.as_deref(), Some("ns"));
        match r.pod {
            PodObject::Pod(p) => assert_eq!(p.metadata.name.as_deref(), Some("p")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_operations_and_kinds_are_not_applicable() {
        let r = decode(pod_request("UPDATE", POD).as_bytes()).unwrap();
        assert!(matches!(r.pod, PodObject::NotApplicable));
        let body = review(
            r#"{"uid":"u","kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{"x":1}}"#,
        );
        assert!(matches!(
            decode(body.as_bytes()).unwrap().pod,
            PodObject::NotApplicable
        ));
        let body = review(
            r#"{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"subResource":"ephemeralcontainers","operation":"CREATE","object":{}}"#,
        );
        assert!(matches!(
            decode(body.as_bytes()).unwrap().pod,
            PodObject::NotApplicable
        ));
    }

    #[test]
    fn an_undecodable_pod_is_reported_not_rejected() {
        let r =
            decode(pod_request("CREATE", r#"{"spec":{"containers":"nope"}}"#).as_bytes()).unwrap();
        assert!(matches!(r.pod, PodObject::Undecodable(m) if m.contains("invalid type")));
    }

    #[test]
    fn bad_reviews() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\xff\xfe".to_vec(), "not valid UTF-8"),
            (b"".to_vec(), "not valid JSON"),
            (b"{\"apiVersion\":".to_vec(), "not valid JSON"),
            (b"[1,2]".to_vec(), "not valid JSON"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(),
                "apiVersion is \"admission.k8s.io/v1beta1\"",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#.to_vec(),
                "kind is \"Pod\"",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
                "no request",
            ),
            (review(r#"{"kind":{"group":"","version":"v1","kind":"Pod"}}"#).into_bytes(), "no uid"),
            (review(r#"{"uid":""}"#).into_bytes(), "no uid"),
        ];
        for (body, want) in cases {
            let err = decode(&body).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn encodes_base64_patch_and_warnings() {
        let r = decode(pod_request("CREATE", POD).as_bytes()).unwrap();
        let mut resp = AdmissionResponse::from(&r.request)
            .with_patch(json_patch::Patch(vec![]))
            .unwrap();
        resp.warnings = Some(vec!["w".into()]);
        let v: serde_json::Value = serde_json::from_slice(&encode(&resp)).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patch"], "W10="); // base64("[]")
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        assert_eq!(v["response"]["warnings"][0], "w");
    }
}

#[cfg(test)]
mod lean_tests {
    use super::*;

    /// The lean decoder keeps everything the planner reads.
    #[test]
    fn lean_pod_matches_the_full_decoder_where_the_planner_looks() {
        let review: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/pods/reviews/deployment-3-containers.json"
        ))
        .unwrap();
        let object = review["request"]["object"].to_string();
        let full: Pod = serde_json::from_str(&object).unwrap();
        let lean = decode_pod(&object).unwrap();
        assert_eq!(lean.spec, full.spec);
        assert_eq!(lean.metadata.name, full.metadata.name);
        assert_eq!(lean.metadata.generate_name, full.metadata.generate_name);
        assert_eq!(lean.metadata.namespace, full.metadata.namespace);
        assert_eq!(lean.metadata.labels, full.metadata.labels);
        assert_eq!(lean.metadata.annotations, full.metadata.annotations);
        assert_eq!(
            lean.metadata.owner_references,
            full.metadata.owner_references
        );
        assert!(lean.metadata.owner_references.is_some());
        assert!(full.metadata.managed_fields.is_some());
        assert!(decode_pod(r#"{"spec": {"containers": 1}}"#).is_err());
        assert!(decode_pod("{}").unwrap().spec.is_none());
    }
}
