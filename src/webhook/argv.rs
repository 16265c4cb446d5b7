//! A container's effective argv and how to wrap it with `reaper --`.
//!
//! Kubernetes rules (containerd/CRI-O apply them; `[]` counts as unset for both fields):
//!
//! | `command` | `args` | what runs |
//! |---|---|---|
//! | unset | unset | image ENTRYPOINT + image CMD |
//! | unset | set | image ENTRYPOINT + pod args |
//! | set | unset | pod command (image CMD dropped) |
//! | set | set | pod command + pod args |
//!
//! The kubelet expands `$(VAR)` in command and args (`$$` → `$`), so every string copied from an
//! image config is written with `$` doubled; the pod's own strings are kept as they are.
use crate::crd::EntrypointOverride;
use crate::image::ImageConfig;
use k8s_openapi::api::core::v1::Container;
use std::collections::BTreeMap;

/// Basenames of programs that already do an init's job (reap, forward signals) as PID 1.
/// `init` covers s6-overlay's `/init` and sysvinit/busybox `/sbin/init`; `systemd` refuses to
/// run under another init anyway.
const INIT_BASENAMES: &[&str] = &[
    "tini",
    "dumb-init",
    "catatonit",
    "reaper",
    "docker-init",
    "init",
    "systemd",
    "s6-svscan",
    "my_init",
];

/// The init `argv0` names, if it is one (its basename), e.g. `Some("tini")` for `/sbin/tini`.
/// Matches `tini-static`, `tini-amd64`, ... too.
pub fn known_init(argv0: &str) -> Option<&str> {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let known = INIT_BASENAMES.contains(&base) || base.starts_with("tini-");
    known.then_some(base)
}

/// `comm` of the pod sandbox's process (the pause image): an init that reaps, PID 1 of every
/// container of a pod with `shareProcessNamespace`.
pub const PAUSE_COMM: &str = "pause";

/// The init a running process's `comm` (its executable's basename, cut to 15 bytes) names, if
/// it is one: [`known_init`]'s list plus the pause process.
pub fn known_init_comm(comm: &str) -> Option<&str> {
    if comm.contains('/') {
        return None;
    }
    if comm == PAUSE_COMM {
        return Some(comm);
    }
    known_init(comm)
}

/// Write a literal string so that Kubernetes' `$(VAR)` expansion gives it back unchanged.
pub fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

fn escape_all(v: &[String]) -> Vec<String> {
    v.iter().map(|s| escape(s)).collect()
}

fn non_empty(v: &Option<Vec<String>>) -> Option<&[String]> {
    v.as_deref().filter(|v| !v.is_empty())
}

/// What the planner knows about the image of a container without `command`.
#[derive(Clone, Copy, Debug)]
pub enum ImageArgv<'a> {
    /// A policy `entrypoints` entry matched the image (it stands for ENTRYPOINT and CMD).
    Policy(&'a EntrypointOverride),
    /// The resolver read the image config.
    Resolved(&'a ImageConfig),
    /// The resolver tried and failed (the reason is shown to the user).
    Failed(&'a str),
    /// Nobody knows.
    Unknown,
}

impl<'a> ImageArgv<'a> {
    fn entrypoint_and_cmd(self) -> Option<(&'a [String], &'a [String])> {
        match self {
            ImageArgv::Policy(e) => Some((&e.command, &e.args)),
            ImageArgv::Resolved(c) => Some((&c.entrypoint, &c.cmd)),
            ImageArgv::Failed(_) | ImageArgv::Unknown => None,
        }
    }
}

/// The argv the container runs, written the way `command` + `args` would spell it (image strings
/// escaped), or `None` when it depends on an unknown image config.
pub fn effective_argv(container: &Container, image: ImageArgv<'_>) -> Option<Vec<String>> {
    if let Some(command) = non_empty(&container.command) {
        let mut argv = command.to_vec();
        argv.extend(
            non_empty(&container.args)
                .unwrap_or_default()
                .iter()
                .cloned(),
        );
        return Some(argv);
    }
    let (entrypoint, cmd) = image.entrypoint_and_cmd()?;
    let mut argv = escape_all(entrypoint);
    match non_empty(&container.args) {
        Some(args) => argv.extend(args.iter().cloned()),
        None => argv.extend(escape_all(cmd)),
    }
    Some(argv)
}

/// For a container without `command` whose image's platforms disagree: the full argv of each
/// platform (key `os/arch[/variant]` as in the index), written like [`effective_argv`] (image
/// strings escaped, the pod's `args` kept), which is what `REAPER_PLATFORM_ARGV` carries. `None`
/// when the pod sets `command`, the image has one config, or every platform ends up with the same
/// argv (the pod's `args` replace differing CMDs). A platform whose argv would be empty is left
/// out (the reaper then runs the argv after `--`); of duplicate keys the first wins, as in the
/// reaper.
pub fn platform_argv(
    container: &Container,
    image: ImageArgv<'_>,
) -> Option<BTreeMap<String, Vec<String>>> {
    if non_empty(&container.command).is_some() {
        return None;
    }
    let ImageArgv::Resolved(config) = image else {
        return None;
    };
    if config.platforms.is_empty() {
        return None;
    }
    let default = effective_argv(container, image)?;
    let mut map = BTreeMap::new();
    for p in &config.platforms {
        let mut argv = escape_all(&p.entrypoint);
        match non_empty(&container.args) {
            Some(args) => argv.extend(args.iter().cloned()),
            None => argv.extend(escape_all(&p.cmd)),
        }
        if !argv.is_empty() {
            map.entry(p.platform.clone()).or_insert(argv);
        }
    }
    if map.values().all(|argv| *argv == default) {
        return None;
    }
    Some(map)
}

/// How a target container stands with respect to wrapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Argv {
    /// Already runs our reaper (`command[0]` is the reaper path): a previous pass wrapped it.
    Wrapped,
    /// Already runs this init (basename of its effective argv[0]).
    HasInit(String),
    /// Can be wrapped: set `command` to this and, when `Some`, `args` too.
    Wrap {
        command: Vec<String>,
        args: Option<Vec<String>>,
    },
    /// Cannot be wrapped; the reason completes "container x: cannot wrap, ...".
    Unknown(String),
}

/// Decide how to wrap `container` so its effective argv becomes
/// `reaper_path prefix_flags... -- <original effective argv>`.
pub fn plan_argv(
    container: &Container,
    image: ImageArgv<'_>,
    reaper_path: &str,
    flags: &[String],
) -> Argv {
    let head = || {
        let mut v = Vec::with_capacity(flags.len() + 2);
        v.push(reaper_path.to_string());
        v.extend(flags.iter().map(|f| escape(f)));
        v.push("--".to_string());
        v
    };
    if let Some(command) = non_empty(&container.command) {
        if command[0] == reaper_path {
            return Argv::Wrapped;
        }
        if let Some(init) = known_init(&command[0]) {
            return Argv::HasInit(init.to_string());
        }
        // `args` stays as it is after the new command.
        let mut new = head();
        new.extend(command.iter().cloned());
        return Argv::Wrap {
            command: new,
            args: None,
        };
    }
    let image_name = container.image.as_deref().unwrap_or_default();
    let Some((entrypoint, cmd)) = image.entrypoint_and_cmd() else {
        return Argv::Unknown(match image {
            ImageArgv::Failed(why) => format!(
                "no command in the pod and image {image_name:?} could not be read ({why}); set command or a ReaperPolicy entrypoint"
            ),
            _ => format!(
                "no command in the pod and the ENTRYPOINT of image {image_name:?} is unknown; set command or a ReaperPolicy entrypoint"
            ),
        });
    };
    let pod_args = non_empty(&container.args);
    let argv0 = entrypoint
        .first()
        .or_else(|| pod_args.and_then(|a| a.first()))
        .or_else(|| cmd.first());
    let Some(argv0) = argv0 else {
        return Argv::Unknown(format!(
            "image {image_name:?} has neither ENTRYPOINT nor CMD and the pod sets no command"
        ));
    };
    if let Some(init) = known_init(argv0) {
        return Argv::HasInit(init.to_string());
    }
    let mut new = head();
    new.extend(escape_all(entrypoint));
    // Setting `command` drops the image CMD, so it moves into `args` unless the pod has its own.
    let args = match pod_args {
        Some(_) => None,
        None if cmd.is_empty() => None,
        None => Some(escape_all(cmd)),
    };
    Argv::Wrap { command: new, args }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Container {
            name: "app".into(),
            image: Some("img:1".into()),
            command: command.map(v),
            args: args.map(v),
            ..Default::default()
        }
    }

    fn cfg(e: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig::new(
            e.iter().map(|s| s.to_string()).collect(),
            cmd.iter().map(|s| s.to_string()).collect(),
        )
    }

    const R: &str = "/.reaper/reaper";

    fn wrap(cmd: &[&str], args: Option<&[&str]>) -> Argv {
        Argv::Wrap {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            args: args.map(|a| a.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn init_names() {
        for (argv0, want) in [
            ("tini", Some("tini")),
            ("/sbin/tini", Some("tini")),
            ("/usr/bin/tini-static", Some("tini-static")),
            ("/tini-amd64", Some("tini-amd64")),
            ("/usr/bin/dumb-init", Some("dumb-init")),
            ("catatonit", Some("catatonit")),
            ("/init", Some("init")),
            ("/usr/local/bin/docker-init", Some("docker-init")),
            ("/.reaper/reaper", Some("reaper")),
            ("/bin/sh", None),
            ("tinix", None),
            ("/usr/local/bin/init.sh", None),
        ] {
            assert_eq!(known_init(argv0), want, "{argv0}");
        }
    }

    #[test]
    fn init_comms() {
        for (comm, want) in [
            ("reaper", Some("reaper")),
            ("pause", Some("pause")),
            ("tini", Some("tini")),
            // comm is cut to 15 bytes: `tini-static-amd64` runs as `tini-static-amd`.
            ("tini-static-amd", Some("tini-static-amd")),
            ("dumb-init", Some("dumb-init")),
            ("s6-svscan", Some("s6-svscan")),
            ("sleep", None),
            ("sh", None),
            ("", None),
            // prctl(PR_SET_NAME) takes any bytes: a slash is not a path here.
            ("x/tini", None),
            ("/pause", None),
        ] {
            assert_eq!(known_init_comm(comm), want, "{comm}");
        }
    }

    #[test]
    fn the_four_kubernetes_cases() {
        let img = cfg(&["/entry", "$HOME"], &["serve", "--port=$(PORT)"]);
        let flags = vec!["--grace=5s".to_string()];
        // command + args: args stay.
        let got = plan_argv(
            &c(Some(&["/app", "$(X)"]), Some(&["-v"])),
            ImageArgv::Unknown,
            R,
            &flags,
        );
        assert_eq!(got, wrap(&[R, "--grace=5s", "--", "/app", "$(X)"], None));
        // command only.
        let got = plan_argv(&c(Some(&["/app"]), None), ImageArgv::Unknown, R, &[]);
        assert_eq!(got, wrap(&[R, "--", "/app"], None));
        // args only: image ENTRYPOINT (escaped) + pod args (kept).
        let got = plan_argv(
            &c(None, Some(&["$(VAR)"])),
            ImageArgv::Resolved(&img),
            R,
            &[],
        );
        assert_eq!(got, wrap(&[R, "--", "/entry", "$$HOME"], None));
        // neither: ENTRYPOINT into command, CMD into args, both escaped.
        let got = plan_argv(&c(None, None), ImageArgv::Resolved(&img), R, &[]);
        assert_eq!(
            got,
            wrap(
                &[R, "--", "/entry", "$$HOME"],
                Some(&["serve", "--port=$$(PORT)"])
            )
        );
        // `args: []` is unset.
        let got = plan_argv(&c(Some(&[]), Some(&[])), ImageArgv::Resolved(&img), R, &[]);
        assert_eq!(
            got,
            wrap(
                &[R, "--", "/entry", "$$HOME"],
                Some(&["serve", "--port=$$(PORT)"])
            )
        );
    }

    #[test]
    fn image_without_entrypoint() {
        let img = cfg(&[], &["nginx", "-g", "daemon off;"]);
        let got = plan_argv(&c(None, None), ImageArgv::Resolved(&img), R, &[]);
        assert_eq!(got, wrap(&[R, "--"], Some(&["nginx", "-g", "daemon off;"])));
        // pod args become the whole argv.
        let got = plan_argv(
            &c(None, Some(&["/bin/app"])),
            ImageArgv::Resolved(&img),
            R,
            &[],
        );
        assert_eq!(got, wrap(&[R, "--"], None));
        let empty = cfg(&[], &[]);
        assert!(matches!(
            plan_argv(&c(None, None), ImageArgv::Resolved(&empty), R, &[]),
            Argv::Unknown(m) if m.contains("neither ENTRYPOINT nor CMD")
        ));
    }

    #[test]
    fn unknown_and_failed_images() {
        assert!(matches!(
            plan_argv(&c(None, Some(&["x"])), ImageArgv::Unknown, R, &[]),
            Argv::Unknown(m) if m.contains("is unknown")
        ));
        assert!(matches!(
            plan_argv(&c(None, None), ImageArgv::Failed("401"), R, &[]),
            Argv::Unknown(m) if m.contains("(401)")
        ));
    }

    #[test]
    fn inits_and_our_own_wrap_are_recognised() {
        assert_eq!(
            plan_argv(
                &c(Some(&[R, "--", "/app"]), None),
                ImageArgv::Unknown,
                R,
                &[]
            ),
            Argv::Wrapped
        );
        assert_eq!(
            plan_argv(
                &c(Some(&["/sbin/tini", "--", "app"]), None),
                ImageArgv::Unknown,
                R,
                &[]
            ),
            Argv::HasInit("tini".into())
        );
        let tini_image = cfg(&["/usr/bin/tini", "--"], &["app"]);
        assert_eq!(
            plan_argv(&c(None, None), ImageArgv::Resolved(&tini_image), R, &[]),
            Argv::HasInit("tini".into())
        );
        let e = EntrypointOverride {
            image: "*".into(),
            command: vec!["dumb-init".into()],
            args: vec![],
        };
        assert_eq!(
            plan_argv(&c(None, None), ImageArgv::Policy(&e), R, &[]),
            Argv::HasInit("dumb-init".into())
        );
    }

    #[test]
    fn per_platform_argv() {
        use crate::image::PlatformConfig;
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let img = ImageConfig::from_platforms(vec![
            PlatformConfig::new("linux/arm64/v8", v(&["/arm", "$A"]), v(&["serve"])),
            PlatformConfig::new("linux/amd64", v(&["/amd"]), v(&["serve", "$(P)"])),
            PlatformConfig::new("linux/ppc64le", v(&[]), v(&[])),
            PlatformConfig::new("linux/amd64", v(&["/dup"]), v(&[])),
        ])
        .unwrap();
        let r = ImageArgv::Resolved(&img);
        // The argv after `--` is amd64's.
        assert_eq!(
            plan_argv(&c(None, None), r, R, &[]),
            wrap(&[R, "--", "/amd"], Some(&["serve", "$$(P)"]))
        );
        let m = platform_argv(&c(None, None), r).unwrap();
        assert_eq!(
            m,
            BTreeMap::from([
                ("linux/amd64".to_string(), v(&["/amd", "serve", "$$(P)"])),
                ("linux/arm64/v8".to_string(), v(&["/arm", "$$A", "serve"])),
            ])
        );
        // Pod args replace CMD on every platform; the entrypoints still differ.
        let m = platform_argv(&c(None, Some(&["$(X)"])), r).unwrap();
        assert_eq!(m["linux/arm64/v8"], v(&["/arm", "$$A", "$(X)"]));
        // A pod command makes the image irrelevant.
        assert_eq!(platform_argv(&c(Some(&["/x"]), None), r), None);
        // Only CMDs differ and the pod sets args: every platform runs the same argv.
        let same_ep = ImageConfig::from_platforms(vec![
            PlatformConfig::new("linux/amd64", v(&["/e"]), v(&["a"])),
            PlatformConfig::new("linux/arm64", v(&["/e"]), v(&["b"])),
        ])
        .unwrap();
        assert!(!same_ep.platforms.is_empty());
        let r = ImageArgv::Resolved(&same_ep);
        assert_eq!(platform_argv(&c(None, Some(&["z"])), r), None);
        assert!(platform_argv(&c(None, None), r).is_some());
        assert_eq!(platform_argv(&c(None, None), ImageArgv::Unknown), None);
        let single = cfg(&["/e"], &[]);
        assert_eq!(
            platform_argv(&c(None, None), ImageArgv::Resolved(&single)),
            None
        );
    }

    #[test]
    fn effective_argv_follows_the_table() {
        let img = cfg(&["/e"], &["c$"]);
        let r = ImageArgv::Resolved(&img);
        assert_eq!(effective_argv(&c(None, None), r).unwrap(), ["/e", "c$$"]);
        assert_eq!(
            effective_argv(&c(None, Some(&["a"])), r).unwrap(),
            ["/e", "a"]
        );
        assert_eq!(effective_argv(&c(Some(&["/x"]), None), r).unwrap(), ["/x"]);
        assert_eq!(
            effective_argv(&c(Some(&["/x"]), Some(&["a"])), r).unwrap(),
            ["/x", "a"]
        );
        assert_eq!(effective_argv(&c(None, None), ImageArgv::Unknown), None);
    }
}
