//! The init's command line and environment (`reaper_init::args::parse`): any argv and any values
//! of the variables it reads.
//!
//! Input: NUL-separated pieces. A piece `$<d><value>` sets environment variable number `d`
//! (`0`-`9`, see `ENVS`) to `value` (the last one wins); every other piece is an argv word
//! (argv\[0\] excluded, as `parse` takes it).
//!
//! Checked: no panic; the same input parses the same way twice; an error renders; Run's command
//! is a suffix of argv whose first word is not an option (unless after `--`); help, version and
//! install ignore the environment; one more `-v` in front only raises the verbosity; putting `--`
//! before the command changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_init::args::{self, Mode, Parsed, UsageError};
use reaper_init::log::Line;
use std::ffi::{CStr, CString};

const ENVS: [&str; 10] = [
    args::ENV_SUBREAPER,
    args::ENV_PROCESS_GROUP,
    args::ENV_REMAP_EXIT,
    args::ENV_PDEATHSIG,
    args::ENV_WARN_REAP,
    args::ENV_VERBOSE,
    args::ENV_REWRITE,
    args::ENV_GRACE,
    args::ENV_TINI_SUBREAPER,
    args::ENV_TINI_KILL_PROCESS_GROUP,
];

fn parse<'a>(
    argv: &'a [&'a CStr],
    env: &'a [Option<Vec<u8>>; 10],
) -> Result<Parsed<'a>, UsageError<'a>> {
    args::parse(argv, &|name| {
        let i = ENVS.iter().position(|v| *v == name)?;
        env[i].as_deref()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut env: [Option<Vec<u8>>; 10] = Default::default();
    let mut words = Vec::new();
    for piece in data.split(|&b| b == 0) {
        match piece {
            [b'$', d, value @ ..] => {
                env[usize::from(d.wrapping_sub(b'0')) % 10] = Some(value.to_vec())
            }
            _ => words.push(CString::new(piece).expect("split on NUL")),
        }
    }
    let argv: Vec<&CStr> = words.iter().map(CString::as_c_str).collect();

    let first = parse(&argv, &env);
    assert_eq!(first, parse(&argv, &env), "not deterministic");

    match &first {
        Err(e) => {
            let mut line = Line::new();
            e.render(&mut line);
            let text = line.finish();
            assert!(text.len() > b"reaper: \n".len() && text.ends_with(b"\n"));
        }
        Ok(p) => match p.mode {
            Mode::Help | Mode::Version | Mode::Install(_) => {
                assert_eq!(p.config, args::Config::default(), "{:?}", p.mode);
                if let Mode::Install(dest) = p.mode {
                    assert!(!dest.is_empty());
                }
            }
            Mode::Pause => {}
            Mode::Run(cmd) => {
                let at = argv.len() - cmd.len();
                assert!(
                    std::ptr::eq(cmd.as_ptr(), argv[at..].as_ptr()),
                    "not a suffix"
                );
                if let Some(c0) = cmd.first() {
                    let after_dashes = at > 0 && argv[at - 1].to_bytes() == b"--";
                    let c0 = c0.to_bytes();
                    assert!(
                        after_dashes || c0 == b"-" || !c0.starts_with(b"-"),
                        "command starts with an option: {c0:?}"
                    );
                    if !after_dashes {
                        let dashes = c"--";
                        let mut with: Vec<&CStr> = argv[..at].to_vec();
                        with.push(dashes);
                        with.extend_from_slice(cmd);
                        assert_eq!(parse(&with, &env), first, "`--` before the command");
                    }
                }
            }
        },
    }

    // One more -v in front: the verbosity goes up by one, nothing else changes (the environment's
    // REAPER_VERBOSE only counts without -v, so only when it is unset).
    if env[5].is_none() {
        let mut with = vec![c"-v"];
        with.extend_from_slice(&argv);
        let second = parse(&with, &env);
        match (&first, second) {
            (Err(a), Err(b)) => assert_eq!(*a, b),
            (Ok(a), Ok(b)) => {
                let mut want = a.clone();
                if matches!(a.mode, Mode::Run(_) | Mode::Pause) {
                    want.config.verbosity = want.config.verbosity.saturating_add(1);
                }
                assert_eq!(b, want);
            }
            (a, b) => panic!("-v changed the outcome: {a:?} then {b:?}"),
        }
    }
});
