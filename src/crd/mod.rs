//! The Reaper CRDs: `ReaperPolicy` (what to do with opted-in pods) and `ZombieReport`
//! (what a node's agent saw). Both are cluster-scoped, group `reaper.dev`, version `v1alpha1`.
//! Doc comments on fields become `kubectl explain` text.

mod policy;
mod report;
pub mod selector;

pub use policy::*;
pub use report::*;
pub use selector::{SelectorError, selector_matches, validate_selector};

use kube::{CustomResourceExt, core::crd::merge_crds};

/// `reaper-controller crds` (no flags of its own).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {}

/// Every CRD this project defines, in a stable order.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    // merge_crds only matters once a second version exists; one version each today.
    vec![
        merge_crds(vec![ReaperPolicy::crd()], crate::keys::API_VERSION)
            .expect("single-version CRD merges"),
        merge_crds(vec![ZombieReport::crd()], crate::keys::API_VERSION)
            .expect("single-version CRD merges"),
    ]
}

/// The YAML stream `reaper-controller crds` prints and `crds/` holds.
pub fn render_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// File name under `crds/` for a CRD (`<plural>.<group>.yaml`).
pub fn file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
