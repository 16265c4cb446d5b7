//! The Reaper CRDs: `ReaperPolicy` (what to do with opted-in pods) and `ZombieReport`
//! (what a node's agent saw). Both are cluster-scoped, group `reaper.dev`, version `v1alpha1`.
//! Doc comments on fields become `kubectl explain` text.

mod policy;
mod report;
pub mod selector;
pub mod yaml;

pub use policy::*;
pub use report::*;
pub use selector::{SelectorError, selector_matches, validate_selector};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, core::crd::merge_crds};
use std::path::{Path, PathBuf};

/// `reaper-controller crds`: print the CRDs, or write one file per CRD into a directory.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    /// Write `<plural>.<group>.yaml` files into this directory instead of printing one YAML stream
    /// (`make crds` writes `crds/`).
    #[arg(long, env = "REAPER_CRDS_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Errors of rendering or writing the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering CRD YAML: {0}")]
    Yaml(#[from] serde_json::Error),
    #[error("writing {path}: {source} (does the directory exist and is it writable?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// First line of every file under `crds/`.
pub const FILE_HEADER: &str =
    "# Generated from src/crd by `make crds` (reaper-controller crds --dir crds): do not edit.\n";

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
pub fn render_yaml() -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// File name under `crds/` for a CRD (`<plural>.<group>.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Every CRD file as `(file name, content)`: what `crds/` must hold.
pub fn render_files() -> Result<Vec<(String, String)>> {
    all()
        .iter()
        .map(|crd| {
            Ok((
                file_name(crd),
                format!("{FILE_HEADER}{}", yaml::to_string(crd)?),
            ))
        })
        .collect()
}

/// Writes [`render_files`] into `dir` (created if missing); returns the paths written.
pub fn write_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    render_files()?
        .into_iter()
        .map(|(name, content)| {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn file_names_are_plural_dot_group() {
        let names: Vec<String> = all().iter().map(file_name).collect();
        assert_eq!(
            names,
            [
                "reaperpolicies.reaper.dev.yaml",
                "zombiereports.reaper.dev.yaml"
            ]
        );
    }

    #[test]
    fn write_dir_writes_one_parseable_file_per_crd() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dir(&dir.path().join("out")).unwrap();
        assert_eq!(written.len(), all().len());
        for (path, crd) in written.iter().zip(all()) {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with(FILE_HEADER));
            let parsed: CustomResourceDefinition = yaml_serde::from_str(&text).unwrap();
            assert_eq!(parsed, crd);
        }
    }

    /// `crds/` is what users and the chart install: it must match the Rust types.
    #[test]
    fn crds_dir_is_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let expected: BTreeMap<String, String> = render_files().unwrap().into_iter().collect();
        let mut actual = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".yaml") {
                    actual.insert(name, std::fs::read_to_string(entry.path()).unwrap());
                }
            }
        }
        let stale: std::collections::BTreeSet<&String> = expected
            .keys()
            .chain(actual.keys())
            .filter(|name| expected.get(*name) != actual.get(*name))
            .collect();
        assert!(
            stale.is_empty(),
            "{} is stale ({stale:?} differ, are missing or are extra): run `make crds`",
            dir.display()
        );
    }
}
