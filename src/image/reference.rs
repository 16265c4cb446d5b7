//! Image references: the one parser (the registry client's) and the glob policies match
//! images with.
use oci_client::Reference;

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    super::glob::matches(pattern, super::glob::Syntax::Star, text)
}

/// The fully qualified form of an image reference, as registries and `crictl` show it:
/// `nginx` → `docker.io/library/nginx:latest`, `team/app:1` → `docker.io/team/app:1`. Parsed by
/// the registry client's own parser (`oci_spec`'s [`Reference`]); a reference it refuses is
/// returned as written (no registry would serve it either).
pub fn normalize_image_reference(image: &str) -> String {
    parse(image).map_or_else(|| image.to_string(), |r| r.whole())
}

/// The registry client's parse of an image reference (`None` when it is not one), with the
/// kubelet's reading of an upper-case first component.
///
/// The kubelet's parser (distribution/reference `splitDockerDomain`) takes a first component with
/// an upper-case letter for a registry host (`MyReg/app` is `app` on host `MyReg`: repositories
/// are lower case). `oci_spec` files it under Docker Hub instead (`docker.io/MyReg/app`: another
/// image, and a reference that no longer parses), so that one case is re-split here.
pub fn parse(image: &str) -> Option<Reference> {
    let r = image.parse::<Reference>().ok()?;
    let Some((first, _)) = image.split_once('/') else {
        return Some(r);
    };
    let upper_host = first.bytes().any(|b| b.is_ascii_uppercase())
        && !first.contains(['.', ':'])
        && r.registry() == "docker.io";
    if !upper_host {
        return Some(r);
    }
    let Some(repository) = r
        .repository()
        .strip_prefix(first)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Some(r);
    };
    let (registry, repository) = (first.to_string(), repository.to_string());
    Some(match (r.tag(), r.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// Whether `image` (with or without tag or digest) is pulled from Docker Hub.
pub fn is_docker_hub(image: &str) -> bool {
    parse(image).is_some_and(|r| r.registry() == "docker.io")
}

/// Whether an image reference matches a policy's `image` glob, as written in the pod or in its
/// fully qualified form (so `*/library/nginx:*` and `nginx:*` both catch `nginx:1.27`).
pub fn image_matches(pattern: &str, image: &str) -> bool {
    glob_matches(pattern, image) || glob_matches(pattern, &normalize_image_reference(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("nginx", "nginx", true),
            ("nginx", "nginx:1", false),
            ("nginx:*", "nginx:1.27", true),
            ("*/nginx:*", "docker.io/library/nginx:1.27", true),
            (
                "registry.example.com/team/*",
                "registry.example.com/team/app:v1",
                true,
            ),
            (
                "registry.example.com/team/*",
                "registry.example.com/other/app:v1",
                false,
            ),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*a", "banana", true),
            ("*an*an*", "banana", true),
            ("**", "x", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_matches(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!glob_matches(&pattern, &text));
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalize() {
        for (i, want) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("team/app", "docker.io/team/app:latest"),
            ("ghcr.io/o/app:v1", "ghcr.io/o/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("127.0.0.1:5000/app:2", "127.0.0.1:5000/app:2"),
            ("index.docker.io/team/app:3", "docker.io/team/app:3"),
            (
                &format!("nginx@{D}"),
                &format!("docker.io/library/nginx@{D}"),
            ),
            (
                &format!("nginx:1@{D}"),
                &format!("docker.io/library/nginx:1@{D}"),
            ),
            // Not a reference (short digest, upper case): as written.
            ("nginx@sha256:abc", "nginx@sha256:abc"),
            ("Bad/Name", "Bad/Name"),
            ("Bad/name/Upper", "Bad/name/Upper"),
        ] {
            assert_eq!(normalize_image_reference(i), want, "{i}");
        }
        assert!(is_docker_hub("nginx") && is_docker_hub("docker.io/team/app:1"));
        assert!(is_docker_hub("index.docker.io/library/nginx"));
        assert!(!is_docker_hub("ghcr.io/o/app") && !is_docker_hub("localhost/app"));
        assert!(!is_docker_hub("127.0.0.1:5000/app"));
        assert!(image_matches("*/library/nginx:*", "nginx:1.27"));
        assert!(image_matches("nginx:*", "nginx:1.27"));
        assert!(!image_matches("redis:*", "nginx:1.27"));
    }

    /// Found by fuzz/fuzz_targets/image_reference.rs: `BaKaNm/e` parsed as
    /// `docker.io/BaKaNm/e:latest`, which does not parse again (normalising was not idempotent),
    /// and is not the image the kubelet pulls: an upper-case first component is a registry host.
    #[test]
    fn upper_case_first_component_is_a_registry_host() {
        for (image, registry, repository, whole) in [
            ("BaKaNm/e", "BaKaNm", "e", "BaKaNm/e:latest"),
            ("MyReg/team/app:1", "MyReg", "team/app", "MyReg/team/app:1"),
            (
                &format!("Reg/app@{D}"),
                "Reg",
                "app",
                &format!("Reg/app@{D}"),
            ),
            (
                &format!("Reg/app:v2@{D}"),
                "Reg",
                "app",
                &format!("Reg/app:v2@{D}"),
            ),
        ] {
            let r = parse(image).unwrap_or_else(|| panic!("{image}"));
            assert_eq!(
                (r.registry(), r.repository()),
                (registry, repository),
                "{image}"
            );
            assert_eq!(r.whole(), whole);
            assert_eq!(parse(&r.whole()), Some(r), "{image}");
            assert_eq!(normalize_image_reference(whole), whole);
            assert!(!is_docker_hub(image));
        }
        // Lower case, a dot or a port: as before.
        assert_eq!(
            normalize_image_reference("team/app"),
            "docker.io/team/app:latest"
        );
        assert_eq!(normalize_image_reference("Reg.io/app"), "Reg.io/app:latest");
        assert_eq!(
            normalize_image_reference("Reg:5000/app"),
            "Reg:5000/app:latest"
        );
    }
}
