//! A [`Plan`] as an RFC 6902 JSONPatch against the pod it was made from.
use super::decide::{AnnotationEdit, Plan};
use crate::keys;
use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, MoveOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation,
};
use k8s_openapi::api::core::v1::EnvVar;
use serde_json::Value;

impl Plan {
    /// The RFC 6902 patch that applies this plan to the pod it was made from (empty when the pod
    /// already is as planned).
    pub fn patch(&self) -> Patch {
        let mut ops = Vec::new();
        let c = &self.changes;
        // Container rewrites first: they use the original indices, before the install container
        // is inserted or moved at the front of initContainers.
        for w in &c.wraps {
            let base = ["spec", w.slot.list.field()];
            let idx = w.slot.index.to_string();
            if let Some(image) = &w.image {
                // `replace`: the image is there (only a container with one is pinned).
                ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: ptr(&[base[0], base[1], &idx, "image"]),
                    value: Value::String(image.clone()),
                }));
            }
            if let Some(command) = &w.command {
                ops.push(add(
                    ptr(&[base[0], base[1], &idx, "command"]),
                    strings(command),
                ));
            }
            if let Some(args) = &w.args {
                ops.push(add(ptr(&[base[0], base[1], &idx, "args"]), strings(args)));
            }
            if let Some(value) = &w.platform_argv {
                // Appended last, so the kubelet's `$(VAR)` expansion sees the same variables as
                // in `args`.
                let var = to_value(&EnvVar {
                    name: keys::ENV_PLATFORM_ARGV.to_string(),
                    value: Some(value.clone()),
                    value_from: None,
                });
                if w.had_env {
                    ops.push(add(ptr(&[base[0], base[1], &idx, "env", "-"]), var));
                } else {
                    ops.push(add(
                        ptr(&[base[0], base[1], &idx, "env"]),
                        Value::Array(vec![var]),
                    ));
                }
            }
            if let Some(mount) = &w.mount {
                let value = to_value(mount);
                if w.had_mounts {
                    ops.push(add(
                        ptr(&[base[0], base[1], &idx, "volumeMounts", "-"]),
                        value,
                    ));
                } else {
                    ops.push(add(
                        ptr(&[base[0], base[1], &idx, "volumeMounts"]),
                        Value::Array(vec![value]),
                    ));
                }
            }
        }
        if let Some(install) = &c.install {
            let volume = to_value(&install.volume);
            if c.had_volumes {
                ops.push(add(ptr(&["spec", "volumes", "-"]), volume));
            } else {
                ops.push(add(ptr(&["spec", "volumes"]), Value::Array(vec![volume])));
            }
            if let Some(container) = &install.container {
                let container = to_value(container);
                if c.had_init_containers {
                    ops.push(add(ptr(&["spec", "initContainers", "0"]), container));
                } else {
                    ops.push(add(
                        ptr(&["spec", "initContainers"]),
                        Value::Array(vec![container]),
                    ));
                }
            }
        }
        if let Some(from) = c.move_install_from {
            ops.push(PatchOperation::Move(MoveOperation {
                from: ptr(&["spec", "initContainers", &from.to_string()]),
                path: ptr(&["spec", "initContainers", "0"]),
            }));
        }
        if c.share_process_namespace {
            ops.push(add(
                ptr(&["spec", "shareProcessNamespace"]),
                Value::Bool(true),
            ));
        }
        let policy = match &self.set_policy {
            Some(AnnotationEdit::Set(p)) => Some(p),
            _ => None,
        };
        let annotations: Vec<(&str, &String)> = [
            (keys::ANNOTATION_INJECTED, self.set_annotation.as_ref()),
            (
                keys::ANNOTATION_IMAGE_DIGESTS,
                self.set_image_digests.as_ref(),
            ),
            (keys::ANNOTATION_VERSION, self.set_version.as_ref()),
            (keys::ANNOTATION_POLICY, policy),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect();
        if self.had_annotations {
            for (key, value) in annotations {
                ops.push(add(
                    ptr(&["metadata", "annotations", key]),
                    Value::String(value.clone()),
                ));
            }
            // Only planned when the pod carries it, so the path exists.
            if self.set_policy == Some(AnnotationEdit::Remove) {
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: ptr(&["metadata", "annotations", keys::ANNOTATION_POLICY]),
                }));
            }
        } else if !annotations.is_empty() {
            let map = annotations
                .into_iter()
                .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
                .collect();
            ops.push(add(ptr(&["metadata", "annotations"]), Value::Object(map)));
        }
        Patch(ops)
    }
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    // `add` on an object member replaces it, so it works whether or not the field exists.
    PatchOperation::Add(AddOperation { path, value })
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // k8s-openapi types always serialise to JSON (string keys, no floats that could be NaN).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::super::decide::{AnnotationEdit, Changes, List, Outcome, Plan, Slot, Wrap};
    use crate::keys;
    use serde_json::{Value, json};

    fn wrap(list: List, index: usize, image: Option<&str>) -> Wrap {
        Wrap {
            slot: Slot { list, index },
            command: Some(vec!["/.reaper/reaper".into(), "--".into(), "/app".into()]),
            args: None,
            mount: None,
            platform_argv: None,
            image: image.map(String::from),
            had_mounts: false,
            had_env: false,
        }
    }

    fn plan(wraps: Vec<Wrap>, digests: Option<&str>, had_annotations: bool) -> Plan {
        Plan {
            outcome: Outcome::Inject(vec![]),
            mode: None,
            policy: None,
            audit: false,
            fallback: None,
            warnings: vec![],
            changes: Changes {
                wraps,
                ..Default::default()
            },
            set_annotation: Some("inject:s,a".into()),
            set_image_digests: digests.map(String::from),
            set_version: None,
            set_policy: None,
            had_annotations,
        }
    }

    fn ops(p: &Plan) -> Vec<Value> {
        p.patch()
            .0
            .iter()
            .map(|op| serde_json::to_value(op).unwrap())
            .collect()
    }

    #[test]
    fn pinned_images_are_replaced_in_place() {
        let p = plan(
            vec![
                wrap(List::Init, 1, Some("side:1@sha256:2")),
                wrap(List::Regular, 0, Some("app:1@sha256:1")),
                wrap(List::Regular, 1, None),
            ],
            Some("a=sha256:1,s=sha256:2"),
            true,
        );
        let ops = ops(&p);
        let replaces: Vec<&Value> = ops.iter().filter(|o| o["op"] == "replace").collect();
        assert_eq!(
            replaces,
            [
                &json!({"op": "replace", "path": "/spec/initContainers/1/image", "value": "side:1@sha256:2"}),
                &json!({"op": "replace", "path": "/spec/containers/0/image", "value": "app:1@sha256:1"}),
            ]
        );
        // Existing annotations: one `add` per key.
        let adds: Vec<&Value> = ops
            .iter()
            .filter(|o| o["path"].as_str().unwrap().starts_with("/metadata"))
            .collect();
        assert_eq!(
            adds,
            [
                &json!({"op": "add", "path": "/metadata/annotations/reaper.dev~1injected", "value": "inject:s,a"}),
                &json!({"op": "add", "path": "/metadata/annotations/reaper.dev~1image-digests", "value": "a=sha256:1,s=sha256:2"}),
            ]
        );
        // The patch applies to such a pod.
        let mut pod = json!({
            "metadata": {"annotations": {}},
            "spec": {
                "initContainers": [{"name": "i", "image": "i"}, {"name": "s", "image": "side:1"}],
                "containers": [{"name": "a", "image": "app:1"}, {"name": "b", "image": "b"}]
            }
        });
        json_patch::patch(&mut pod, &p.patch()).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["image"], "app:1@sha256:1");
        assert_eq!(pod["spec"]["containers"][1]["image"], "b");
        assert_eq!(pod["spec"]["initContainers"][1]["image"], "side:1@sha256:2");
    }

    #[test]
    fn release_and_policy_are_written_with_the_outcome_and_a_stale_policy_removed() {
        let mut p = plan(vec![], None, false);
        p.set_version = Some("1.2.3".into());
        p.set_policy = Some(AnnotationEdit::Set("gov".into()));
        assert_eq!(
            ops(&p),
            [
                json!({"op": "add", "path": "/metadata/annotations", "value": {
                    keys::ANNOTATION_INJECTED: "inject:s,a",
                    keys::ANNOTATION_VERSION: "1.2.3",
                    keys::ANNOTATION_POLICY: "gov",
                }})
            ]
        );
        let mut p = plan(vec![], None, true);
        p.set_annotation = None;
        p.set_policy = Some(AnnotationEdit::Remove);
        assert_eq!(
            ops(&p),
            [json!({"op": "remove", "path": "/metadata/annotations/reaper.dev~1policy"})]
        );
        let mut pod =
            json!({"metadata": {"annotations": {keys::ANNOTATION_POLICY: "old", "x": "y"}}});
        json_patch::patch(&mut pod, &p.patch()).unwrap();
        assert_eq!(pod["metadata"]["annotations"], json!({"x": "y"}));
    }

    #[test]
    fn annotations_are_created_together() {
        let p = plan(vec![], Some("a=sha256:1"), false);
        assert_eq!(
            ops(&p),
            [
                json!({"op": "add", "path": "/metadata/annotations", "value": {
                    keys::ANNOTATION_INJECTED: "inject:s,a",
                    keys::ANNOTATION_IMAGE_DIGESTS: "a=sha256:1",
                }})
            ]
        );
        // Nothing recorded: only `reaper.dev/injected`, as before.
        assert_eq!(
            ops(&plan(vec![], None, false)),
            [
                json!({"op": "add", "path": "/metadata/annotations", "value": {
                    keys::ANNOTATION_INJECTED: "inject:s,a",
                }})
            ]
        );
    }
}
