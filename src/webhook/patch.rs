//! A [`Plan`] as an RFC 6902 JSONPatch against the pod it was made from.
use super::decide::Plan;
use crate::keys;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, MoveOperation, Patch, PatchOperation};
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
            let container = to_value(&install.container);
            if c.had_init_containers {
                ops.push(add(ptr(&["spec", "initContainers", "0"]), container));
            } else {
                ops.push(add(
                    ptr(&["spec", "initContainers"]),
                    Value::Array(vec![container]),
                ));
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
        if let Some(value) = &self.set_annotation {
            if self.had_annotations {
                ops.push(add(
                    ptr(&["metadata", "annotations", keys::ANNOTATION_INJECTED]),
                    Value::String(value.clone()),
                ));
            } else {
                let mut map = serde_json::Map::new();
                map.insert(
                    keys::ANNOTATION_INJECTED.to_string(),
                    Value::String(value.clone()),
                );
                ops.push(add(ptr(&["metadata", "annotations"]), Value::Object(map)));
            }
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
