//! The `reaper` init: exit codes, option parsing, the environment, `--version`/`--help`,
//! `--install` and `REAPER_PLATFORM_ARGV`. Real processes, as PID 1 and as subreaper.

// These tests signal the init and re-wire its file descriptors and signal state.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn passes_exit_codes_and_signal_deaths() {
    for how in [As::Pid1, As::Subreaper] {
        for (script, want) in [
            ("exit 0", 0),
            ("exit 3", 3),
            ("exit 255", 255),
            ("kill -9 $$", 137),
            ("kill -TERM $$", 143),
        ] {
            let out = run(reaper(), how, &["--", "sh", "-c", script]);
            assert_eq!(out.code(), want, "{how:?} {script}: {out:?}");
        }
    }
}

#[test]
fn command_not_found_is_127_and_not_executable_is_126() {
    let dir = tempdir();
    let plain = dir.path().join("not-executable");
    fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    for how in [As::Pid1, As::Subreaper] {
        let out = run(reaper(), how, &["--", "no-such-command-xyz"]);
        assert_eq!(out.code(), 127, "{out:?}");
        assert_eq!(
            out.stderr.trim_end(),
            "reaper: cannot run 'no-such-command-xyz': No such file or directory",
            "one line with the reason"
        );
        let out = run(reaper(), how, &["--", plain.to_str().unwrap()]);
        assert_eq!(out.code(), 126, "{out:?}");
        assert!(out.stderr.contains("Permission denied"), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        let out = run(reaper(), how, &["--", dir.path().to_str().unwrap()]);
        assert_eq!(out.code(), 126, "a directory cannot be executed: {out:?}");
    }
}

#[test]
fn usage_errors_exit_2_with_usage() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "reaper: no command given"),
        (&["--"], "reaper: no command given"),
        (&["-v", "--"], "reaper: no command given"),
        (&["--bogus", "true"], "reaper: unknown option '--bogus'"),
        (&["-x", "true"], "reaper: unknown option '-x'"),
        (&["--grace"], "reaper: option --grace needs a value"),
        (
            &["--grace=soon", "true"],
            "reaper: bad value 'soon' for --grace",
        ),
        (&["--pause", "true"], "reaper: --pause takes no command"),
    ];
    for (args, want) in cases {
        let out = run(reaper(), As::Subreaper, args);
        assert_eq!(out.code(), 2, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(want), "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("usage: reaper [OPTIONS] [--] COMMAND [ARG...]"),
            "{out:?}"
        );
    }
}

#[test]
fn option_parsing_stops_at_the_command() {
    // `-c` belongs to sh, with or without `--`.
    let out = run(reaper(), As::Subreaper, &["sh", "-c", "exit 4"]);
    assert_eq!(out.code(), 4, "{out:?}");
    let out = run(reaper(), As::Subreaper, &["-v", "sh", "-c", "exit 5"]);
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(
        out.stderr.contains("reaper: started 'sh' as pid"),
        "{out:?}"
    );
    // The webhook's form: long options with `=`, bundled -vv, then `--`.
    let out = run(
        reaper(),
        As::Subreaper,
        &[
            "--grace=5s",
            "--process-group",
            "--rewrite=TERM:QUIT",
            "-vv",
            "--",
            "sh",
            "-c",
            "echo \"$@\"",
            "x",
            "-v",
            "--grace=1s",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.stdout, "-v --grace=1s\n",
        "arguments after the command reach it untouched"
    );
    // Separate values and short bundles.
    let out = run(
        reaper(),
        As::Subreaper,
        &["--grace", "500ms", "-sw", "-e", "9", "sh", "-c", "exit 9"],
    );
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn remap_exit() {
    let out = run(
        reaper(),
        As::Pid1,
        &["-e", "3", "-e4", "--", "sh", "-c", "exit 4"],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let out = run(
        reaper(),
        As::Pid1,
        &["--remap-exit=143", "--", "sh", "-c", "kill $$"],
    );
    assert_eq!(out.code(), 0, "128+N codes can be remapped too: {out:?}");
    let out = run(reaper(), As::Pid1, &["-e", "3", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.code(), 5, "{out:?}");
}

#[test]
fn options_from_the_environment() {
    let out = run_env(
        As::Subreaper,
        &["sh", "-c", "exit 6"],
        &[("REAPER_REMAP_EXIT", "5, 6")],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    // The command line wins over the environment.
    let out = run_env(
        As::Subreaper,
        &["-e", "7", "sh", "-c", "exit 6"],
        &[("REAPER_REMAP_EXIT", "6")],
    );
    assert_eq!(out.code(), 6, "{out:?}");
    let out = run_env(
        As::Subreaper,
        &["true"],
        &[("REAPER_VERBOSE", "1"), ("REAPER_SUBREAPER", "yes")],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("reaper: started 'true'"), "{out:?}");
    let out = run_env(As::Subreaper, &["true"], &[("REAPER_GRACE", "forever")]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .starts_with("reaper: bad value 'forever' in REAPER_GRACE"),
        "{out:?}"
    );
    // tini's variables are accepted as they are in tini: set means on.
    let out = run_env(
        As::Subreaper,
        &[
            "sh",
            "-c",
            "read -r pid _ _ _ pg _ < /proc/$$/stat; [ \"$pid\" = \"$pg\" ]",
        ],
        &[("TINI_SUBREAPER", ""), ("TINI_KILL_PROCESS_GROUP", "1")],
    );
    assert_eq!(
        out.code(),
        0,
        "TINI_KILL_PROCESS_GROUP puts the child in its own group: {out:?}"
    );
    let out = run_env(
        As::Subreaper,
        &[
            "sh",
            "-c",
            "read -r pid _ _ _ pg _ < /proc/$$/stat; [ \"$pid\" = \"$pg\" ]",
        ],
        &[],
    );
    assert_eq!(
        out.code(),
        1,
        "without -g (and no terminal) the child shares the reaper's group: {out:?}"
    );
    // The environment reaches the child unchanged (REAPER_* included: only
    // REAPER_PLATFORM_ARGV is the reaper's own).
    let out = run_env(
        As::Subreaper,
        &["sh", "-c", "echo \"$APP_X|$REAPER_GRACE\""],
        &[("APP_X", "a b"), ("REAPER_GRACE", "3s")],
    );
    assert_eq!(out.stdout, "a b|3s\n", "{out:?}");
}

#[test]
fn cwd_umask_and_file_descriptors_reach_the_child() {
    let dir = tempdir();
    let mut cmd = init_command(
        reaper(),
        As::Subreaper,
        &["sh", "-c", "pwd; umask; cat <&7"],
    );
    cmd.current_dir(dir.path());
    // fd 7 comes from the parent (a file), umask 027.
    let f = dir.path().join("seven");
    fs::write(&f, "fd7-content\n").unwrap();
    let file = fs::File::open(&f).unwrap();
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = file.as_raw_fd();
    // SAFETY: dup2/umask between fork and exec are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(0o027);
            Ok(())
        });
    }
    let out = start(cmd, As::Subreaper).wait(TIMEOUT);
    assert_eq!(out.code(), 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            dir.path().canonicalize().unwrap().to_str().unwrap(),
            "0027",
            "fd7-content"
        ],
        "{out:?}"
    );
}

#[test]
fn version_and_help() {
    let out = run(reaper(), As::Subreaper, &["--version"]);
    assert_eq!(out.code(), 0);
    assert_eq!(
        out.stdout,
        format!("reaper {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = run(reaper(), As::Subreaper, &["--help"]);
    assert_eq!(out.code(), 0);
    for needle in [
        "--subreaper",
        "--grace DURATION",
        "REAPER_REWRITE",
        "--install DEST",
        "--pause",
        "REAPER_PLATFORM_ARGV",
    ] {
        assert!(
            out.stdout.contains(needle),
            "help lacks {needle}: {}",
            out.stdout
        );
    }
}

#[test]
fn install_copies_the_binary_and_the_copy_runs() {
    let dir = tempdir();
    let out = run(
        reaper(),
        As::Subreaper,
        &["--install", dir.path().to_str().unwrap()],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let copy = dir.path().join("reaper");
    let meta = fs::metadata(&copy).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o555);
    assert_eq!(meta.len(), fs::metadata(reaper()).unwrap().len());
    let out = run(
        copy.to_str().unwrap(),
        As::Pid1,
        &["--", "sh", "-c", "exit 6"],
    );
    assert_eq!(out.code(), 6, "{out:?}");

    // A file path, `=` form, replacing an existing file.
    let file = dir.path().join("init");
    fs::write(&file, "old").unwrap();
    let out = run(
        reaper(),
        As::Subreaper,
        &[&format!("--install={}", file.display())],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let out = run(file.to_str().unwrap(), As::Subreaper, &["--version"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains(".tmp-")),
        "no temp file left: {names:?}"
    );

    // Errors: exit 1 and say what to do.
    let out = run(
        reaper(),
        As::Subreaper,
        &[
            "--install",
            dir.path().join("missing/dir/").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.starts_with("reaper: --install: cannot create"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("DEST must be a writable directory"),
        "{out:?}"
    );
    let out = run(
        reaper(),
        As::Subreaper,
        &["--install", dir.path().to_str().unwrap(), "sh"],
    );
    assert_eq!(out.code(), 2, "{out:?}");
}

/// The OCI name of the platform the tests run on (same mapping as the reaper's).
fn own_platform_keys() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("linux/amd64", None),
        "aarch64" => ("linux/arm64", Some("linux/arm64/v8")),
        "riscv64" => ("linux/riscv64", None),
        "s390x" => ("linux/s390x", None),
        other => panic!("add {other} to own_platform_keys"),
    }
}

#[test]
fn platform_argv_replaces_the_command() {
    let (key, specific) = own_platform_keys();
    // The variable is removed from the child's environment.
    let check = r#"[ -z \"${REAPER_PLATFORM_ARGV+set}\" ] && exit 21; exit 22"#;
    let json = format!(
        r#"{{"linux/s390x-nope": ["sh", "-c", "exit 30"], "{key}": ["sh", "-c", "{check}"]{}}}"#,
        specific
            .map(|s| format!(r#", "{s}": ["sh", "-c", "exit 23"]"#))
            .unwrap_or_default()
    );
    let want = if specific.is_some() { 23 } else { 21 };
    for how in [As::Pid1, As::Subreaper] {
        let out = run_env(
            how,
            &["-v", "--", "sh", "-c", "exit 40"],
            &[("REAPER_PLATFORM_ARGV", &json)],
        );
        assert_eq!(out.code(), want, "{how:?} {json}: {out:?}");
        assert!(
            out.stderr
                .contains("REAPER_PLATFORM_ARGV: running the argv for linux/"),
            "{out:?}"
        );
    }
    // No command after `--` is fine when the variable supplies one.
    let out = run_env(As::Subreaper, &[], &[("REAPER_PLATFORM_ARGV", &json)]);
    assert_eq!(out.code(), want, "{out:?}");

    // No entry for this platform: the command after `--` runs.
    let other = r#"{"windows/amd64": ["cmd.exe"], "linux/mips64le": ["x"]}"#;
    let out = run_env(
        As::Subreaper,
        &["--", "sh", "-c", "exit 41"],
        &[("REAPER_PLATFORM_ARGV", other)],
    );
    assert_eq!(out.code(), 41, "{out:?}");
    let out = run_env(As::Subreaper, &[], &[("REAPER_PLATFORM_ARGV", other)]);
    assert_eq!(
        out.code(),
        2,
        "nothing to run at all is a usage error: {out:?}"
    );

    // Invalid JSON: one warning line, then the command after `--`, without the variable.
    let out = run_env(
        As::Subreaper,
        &[
            "--",
            "sh",
            "-c",
            "[ -z \"${REAPER_PLATFORM_ARGV+set}\" ] && exit 42",
        ],
        &[("REAPER_PLATFORM_ARGV", r#"{"linux/amd64": "/app"}"#)],
    );
    assert_eq!(out.code(), 42, "{out:?}");
    assert_eq!(
        out.stderr,
        "reaper: ignoring REAPER_PLATFORM_ARGV: expected an argv array of strings at byte 16; running the command after --\n"
    );

    // Escapes arrive decoded.
    let json = format!(
        r#"{{"{key}": ["sh", "-c", "printf '%s|' \"$@\"", "x", "caf\u00e9 \"q\"", "tab\there", "\ud83d\ude00"]}}"#
    );
    let out = run_env(As::Subreaper, &[], &[("REAPER_PLATFORM_ARGV", &json)]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "café \"q\"|tab\there|😀|");
}
