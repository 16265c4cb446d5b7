//! `reaper`: a tiny PID 1 (tini class). std + libc (and the constants-only contract crate).
//!
//! Runs a command, forwards signals to it, reaps every zombie, drains leftovers when the command
//! exits, and exits with the command's status. Built static by `make reaper`; the binary
//! (src/main.rs) is only the C entry point.
//!
//! Layout: pure modules (`args`, `signals`, `status`, `platform`, `log`) carry the logic and the
//! unit tests, and are public so fuzz targets can reach the parsers; `sys` is the only module
//! with `unsafe`; `init` is the loop; `install` is `--install`. The hot path avoids
//! `format!`/fmt so a start touches as few pages as possible.
#![deny(unsafe_code)]

pub mod args;
pub mod init;
pub mod install;
pub mod log;
pub mod platform;
pub mod signals;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;

use std::ffi::{CStr, CString};

use args::{Mode, UsageError};
use log::Line;
use log::Part::{Num, Str};
use log::say;

/// The environment variable with per-platform argvs (see `platform`).
use reaper_contract::init::ENV_PLATFORM_ARGV;

/// Everything after the C entry point; returns the exit code.
pub fn run(argv: &[&'static CStr]) -> u8 {
    let rest = argv.get(1..).unwrap_or(&[]);
    let env = |name| -> Option<&[u8]> { sys::getenv(name) };
    let parsed = match args::parse(rest, &env) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    match parsed.mode {
        Mode::Help => {
            sys::write_all(1, args::HELP.as_bytes());
            0
        }
        Mode::Version => {
            sys::write_all(
                1,
                concat!("reaper ", env!("CARGO_PKG_VERSION"), "\n").as_bytes(),
            );
            0
        }
        Mode::Install(dest) => install::run(dest, argv.first().copied(), parsed.config.verbosity),
        Mode::Pause => init::pause(&parsed.config),
        Mode::Run(command) => {
            let platform_argv = platform_argv(parsed.config.verbosity);
            let owned: Vec<&CStr>;
            let command = match &platform_argv {
                Some(v) => {
                    owned = v.iter().map(CString::as_c_str).collect();
                    &owned[..]
                }
                None => command,
            };
            if command.is_empty() {
                return usage_error(&UsageError::Conflict("no command given"));
            }
            init::supervise(&parsed.config, command)
        }
    }
}

/// The argv from `REAPER_PLATFORM_ARGV` for this platform, if any. The variable is removed from
/// the environment either way: it is the reaper's, not the application's.
#[inline(never)]
fn platform_argv(verbosity: u8) -> Option<Vec<CString>> {
    let raw = sys::getenv(ENV_PLATFORM_ARGV)?;
    sys::remove_env(ENV_PLATFORM_ARGV);
    match platform::parse_map(raw) {
        Err(e) => {
            say(&[
                Str("ignoring REAPER_PLATFORM_ARGV: "),
                Str(e.what),
                Str(" at byte "),
                Num(e.offset as i64),
                Str("; running the command after --"),
            ]);
            None
        }
        Ok(map) => {
            let found = platform::select(&map, &platform::CURRENT);
            if verbosity >= 1 {
                match found {
                    Some((key, _)) => {
                        say(&[Str("REAPER_PLATFORM_ARGV: running the argv for "), Str(key)])
                    }
                    None => say(&[Str(
                        "REAPER_PLATFORM_ARGV: no entry for this platform; running the command after --",
                    )]),
                }
            }
            found.map(|(_, argv)| argv.to_vec())
        }
    }
}

#[cold]
#[inline(never)]
fn usage_error(e: &UsageError) -> u8 {
    let mut l = Line::new();
    e.render(&mut l);
    l.emit();
    sys::write_all(2, args::USAGE.as_bytes());
    status::USAGE
}
