//! Digests of the images whose argv the webhook read from a registry: which containers have one to
//! record, the `reaper.dev/image-digests` annotation that records them, and the `image@digest`
//! reference `--pin-digests` rewrites such a container's image to (so the kubelet runs exactly the
//! image whose ENTRYPOINT and CMD now follow `reaper --`; a tag moved since cannot change them).
//!
//! Annotation format ([`crate::keys::ANNOTATION_IMAGE_DIGESTS`]): `<container>=<digest>` pairs joined by
//! `,`, sorted by container name, e.g. `app=sha256:4f…,sidecar=sha256:9c…`. Container names are
//! DNS labels and digests `algorithm:hex`, so neither `,` nor `=` occurs inside a pair; split on
//! `,`, then on the first `=`.
use super::argv::ImageArgv;
use crate::image::ImageIndex;
use crate::registry::client::valid_digest;
use k8s_openapi::api::core::v1::Container;
use std::collections::BTreeMap;

/// The digest to record for `container`, about to be wrapped with the argv `image` describes:
/// `Some` only when that argv came from the image config the resolver read (no `command` in the
/// pod, no policy entrypoint), the resolver read a well-formed digest for it, and the reference
/// does not name a digest already.
pub fn digest_to_record<'a>(
    container: &Container,
    image: ImageArgv<'_>,
    images: &'a ImageIndex,
) -> Option<&'a str> {
    let has_command = container.command.as_ref().is_some_and(|c| !c.is_empty());
    if has_command || !matches!(image, ImageArgv::Resolved(_)) {
        return None;
    }
    let reference = container.image.as_deref().filter(|i| !i.is_empty())?;
    if has_digest(reference) {
        return None;
    }
    images.digest(reference).filter(|d| valid_digest(d))
}

/// Whether an image reference already names a digest (`name@sha256:…`, `name:tag@sha256:…`).
pub fn has_digest(reference: &str) -> bool {
    reference.contains('@')
}

/// `reference` pinned to `digest`, its tag kept for people reading the spec (`app:1@sha256:…`;
/// runtimes pull by the digest).
pub fn pinned(reference: &str, digest: &str) -> String {
    format!("{reference}@{digest}")
}

/// The pairs of an annotation value; malformed pairs are skipped.
pub fn parse(value: &str) -> BTreeMap<String, String> {
    value
        .split(',')
        .filter_map(|pair| {
            let (name, digest) = pair.split_once('=')?;
            let (name, digest) = (name.trim(), digest.trim());
            (!name.is_empty() && !digest.is_empty()).then(|| (name.to_string(), digest.to_string()))
        })
        .collect()
}

/// The annotation value of these pairs (sorted by container name).
pub fn format(digests: &BTreeMap<String, String>) -> String {
    digests
        .iter()
        .map(|(name, digest)| format!("{name}={digest}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The new value of the annotation once `recorded` (container → digest) is added to `existing`
/// (the pod's value, if any), or `None` when that changes nothing. Entries are only ever added or
/// updated, so a pass that records nothing (a re-admission of a mutated pod) leaves the annotation
/// as it is.
pub fn annotation_update(
    existing: Option<&str>,
    recorded: &BTreeMap<String, String>,
) -> Option<String> {
    if recorded.is_empty() {
        return None;
    }
    let mut merged = existing.map(parse).unwrap_or_default();
    merged.extend(recorded.iter().map(|(k, v)| (k.clone(), v.clone())));
    let value = format(&merged);
    (existing != Some(value.as_str())).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EntrypointOverride;
    use crate::image::ImageConfig;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn c(image: &str, command: Option<&[&str]>) -> Container {
        Container {
            name: "app".into(),
            image: Some(image.into()),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn only_registry_read_argvs_without_a_digest_are_recorded() {
        let config = ImageConfig::new(vec!["/app".into()], vec![]);
        let mut images = ImageIndex::new();
        images.insert("app:1", Ok(config.clone()));
        images.set_digest("app:1", D1);
        images.insert(format!("app@{D1}"), Ok(config.clone()));
        images.set_digest(format!("app@{D1}"), D1);
        images.insert("bad:1", Ok(config.clone()));
        images.set_digest("bad:1", "sha256:short");
        images.insert("nodigest:1", Ok(config.clone()));
        let resolved = ImageArgv::Resolved(&config);
        let record = |c: &Container, image| digest_to_record(c, image, &images);

        assert_eq!(record(&c("app:1", None), resolved), Some(D1));
        // `command: []` is unset.
        assert_eq!(record(&c("app:1", Some(&[])), resolved), Some(D1));
        // The pod's command: the image's argv is not used.
        assert_eq!(record(&c("app:1", Some(&["/mine"])), resolved), None);
        // A policy entrypoint: nothing was read.
        let e = EntrypointOverride {
            image: "app:*".into(),
            command: vec!["/x".into()],
            args: vec![],
        };
        assert_eq!(record(&c("app:1", None), ImageArgv::Policy(&e)), None);
        // Failed or unknown (timed out, NoImageResolver).
        assert_eq!(record(&c("app:1", None), ImageArgv::Failed("401")), None);
        assert_eq!(record(&c("app:1", None), ImageArgv::Unknown), None);
        // Already pinned by its author, with or without a tag.
        assert_eq!(record(&c(&format!("app@{D1}"), None), resolved), None);
        assert_eq!(record(&c(&format!("app:1@{D1}"), None), resolved), None);
        // No digest, or one that is not well-formed.
        assert_eq!(record(&c("nodigest:1", None), resolved), None);
        assert_eq!(record(&c("bad:1", None), resolved), None);
        assert_eq!(record(&c("", None), resolved), None);
    }

    #[test]
    fn pinned_keeps_the_tag() {
        assert_eq!(
            pinned("registry.example.com:5000/team/app:1.2", D1),
            format!("registry.example.com:5000/team/app:1.2@{D1}")
        );
        assert_eq!(pinned("busybox", D1), format!("busybox@{D1}"));
        assert!(has_digest(&pinned("busybox", D1)));
        assert!(!has_digest("registry.example.com:5000/team/app:1.2"));
    }

    #[test]
    fn annotation_round_trip_and_merge() {
        let m = BTreeMap::from([
            ("sidecar".to_string(), D2.to_string()),
            ("app".to_string(), D1.to_string()),
        ]);
        let v = format(&m);
        assert_eq!(v, format!("app={D1},sidecar={D2}"));
        assert_eq!(parse(&v), m);
        assert_eq!(parse(""), BTreeMap::new());
        assert_eq!(
            parse(" a = x ,=y,z=,junk,b=c"),
            BTreeMap::from([
                ("a".to_string(), "x".to_string()),
                ("b".to_string(), "c".to_string())
            ])
        );

        let app = BTreeMap::from([("app".to_string(), D1.to_string())]);
        // Nothing recorded: the annotation stays as it is, whatever it holds.
        assert_eq!(annotation_update(None, &BTreeMap::new()), None);
        assert_eq!(annotation_update(Some("junk"), &BTreeMap::new()), None);
        // New.
        assert_eq!(annotation_update(None, &app), Some(format!("app={D1}")));
        // Already there: no change (convergence).
        assert_eq!(annotation_update(Some(&format!("app={D1}")), &app), None);
        // Added to earlier entries, updated when the digest differs.
        let side = format!("sidecar={D2}");
        assert_eq!(
            annotation_update(Some(&side), &app),
            Some(format!("app={D1},{side}"))
        );
        assert_eq!(
            annotation_update(Some(&format!("app={D2}")), &app),
            Some(format!("app={D1}"))
        );
    }
}
