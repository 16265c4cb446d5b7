//! Command line and environment → [`Parsed`]. Pure: the environment comes in as a lookup function.
//!
//! Rules: short options bundle (`-vv`, `-sg`, `-e3`); long options take `--grace 5s` or
//! `--grace=5s`; parsing stops at `--` or at the first argument that is not an option, so
//! `reaper sh -c 'x'` hands `-c` to sh. Every option also reads `REAPER_<LONG_NAME>`; the command
//! line wins over the environment. tini's `TINI_SUBREAPER` and `TINI_KILL_PROCESS_GROUP` count
//! when set at all, as in tini.

use std::ffi::CStr;
use std::time::Duration;

use libc::c_int;

use crate::log::Line;
use crate::signals::{self, Rewrite, RewriteError};
use crate::status::RemapExit;
use reaper_contract::init as opt;

/// Drain time when neither `--grace` nor `REAPER_GRACE` is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Settings for running a command or pausing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub subreaper: bool,
    pub process_group: bool,
    pub remap_exit: RemapExit,
    pub pdeathsig: Option<c_int>,
    pub warn_reap: bool,
    pub verbosity: u8,
    pub rewrite: Rewrite,
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            subreaper: false,
            process_group: false,
            remap_exit: RemapExit::default(),
            pdeathsig: None,
            warn_reap: false,
            verbosity: 0,
            rewrite: Rewrite::default(),
            grace: DEFAULT_GRACE,
        }
    }
}

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Run a command (possibly empty here: `REAPER_PLATFORM_ARGV` may supply it).
    Run(&'a [&'a CStr]),
    /// No child: reap whatever is re-parented, exit 0 on SIGTERM/SIGINT.
    Pause,
    /// Copy this binary to the destination.
    Install(&'a CStr),
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub config: Config,
    pub mode: Mode<'a>,
}

/// A usage error: reported with the usage text and exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError<'a> {
    UnknownOption(&'a [u8]),
    MissingValue(&'static str),
    UnexpectedValue(&'static str),
    BadValue {
        option: &'static str,
        value: &'a [u8],
        reason: &'static str,
    },
    BadEnv {
        var: &'static str,
        value: &'a [u8],
        reason: &'static str,
    },
    Conflict(&'static str),
}

impl UsageError<'_> {
    /// Appends the one-line message (without the `reaper: ` prefix) to `line`.
    pub fn render(&self, line: &mut Line) {
        match *self {
            Self::UnknownOption(o) => line.str("unknown option '").bytes(o).str("'"),
            Self::MissingValue(o) => line.str("option --").str(o).str(" needs a value"),
            Self::UnexpectedValue(o) => line.str("option --").str(o).str(" takes no value"),
            Self::BadValue {
                option,
                value,
                reason,
            } => line
                .str("bad value '")
                .bytes(value)
                .str("' for --")
                .str(option)
                .str(": ")
                .str(reason),
            Self::BadEnv { var, value, reason } => line
                .str("bad value '")
                .bytes(value)
                .str("' in ")
                .str(var)
                .str(": ")
                .str(reason),
            Self::Conflict(what) => line.str(what),
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Subreaper,
    ProcessGroup,
    RemapExit,
    Pdeathsig,
    WarnReap,
    Verbose,
    Rewrite,
    Grace,
    Install,
    Pause,
    Version,
    Help,
}

struct Spec {
    opt: Opt,
    long: &'static str,
    short: Option<u8>,
    takes_value: bool,
}

const SPECS: &[Spec] = &[
    Spec {
        opt: Opt::Subreaper,
        long: opt::OPT_SUBREAPER,
        short: Some(b's'),
        takes_value: false,
    },
    Spec {
        opt: Opt::ProcessGroup,
        long: opt::OPT_PROCESS_GROUP,
        short: Some(b'g'),
        takes_value: false,
    },
    Spec {
        opt: Opt::RemapExit,
        long: opt::OPT_REMAP_EXIT,
        short: Some(b'e'),
        takes_value: true,
    },
    Spec {
        opt: Opt::Pdeathsig,
        long: opt::OPT_PDEATHSIG,
        short: Some(b'p'),
        takes_value: true,
    },
    Spec {
        opt: Opt::WarnReap,
        long: opt::OPT_WARN_REAP,
        short: Some(b'w'),
        takes_value: false,
    },
    Spec {
        opt: Opt::Verbose,
        long: opt::OPT_VERBOSE,
        short: Some(b'v'),
        takes_value: false,
    },
    Spec {
        opt: Opt::Rewrite,
        long: opt::OPT_REWRITE,
        short: None,
        takes_value: true,
    },
    Spec {
        opt: Opt::Grace,
        long: opt::OPT_GRACE,
        short: None,
        takes_value: true,
    },
    Spec {
        opt: Opt::Install,
        long: opt::OPT_INSTALL,
        short: None,
        takes_value: true,
    },
    Spec {
        opt: Opt::Pause,
        long: opt::OPT_PAUSE,
        short: None,
        takes_value: false,
    },
    Spec {
        opt: Opt::Version,
        long: opt::OPT_VERSION,
        short: Some(b'V'),
        takes_value: false,
    },
    Spec {
        opt: Opt::Help,
        long: opt::OPT_HELP,
        short: Some(b'h'),
        takes_value: false,
    },
];

/// Values seen on the command line (before the environment fills the gaps).
#[derive(Default)]
struct Cli<'a> {
    subreaper: bool,
    process_group: bool,
    remap_exit: Option<RemapExit>,
    pdeathsig: Option<c_int>,
    warn_reap: bool,
    verbose: u8,
    rewrite: Option<Rewrite>,
    grace: Option<Duration>,
    install: Option<&'a CStr>,
    pause: bool,
}

/// An option's value from the next argument (`--grace 5s`, `-e 3`).
fn next_value<'a>(
    args: &'a [&'a CStr],
    i: &mut usize,
    spec: &Spec,
) -> Result<&'a CStr, UsageError<'a>> {
    let v = args.get(*i).ok_or(UsageError::MissingValue(spec.long))?;
    *i += 1;
    Ok(v)
}

/// `--help`, `--version`, `--install`, `--pause`: decided before the environment is read.
fn early_exit(mode: Mode<'_>) -> Parsed<'_> {
    Parsed {
        config: Config::default(),
        mode,
    }
}

/// Parses `args` (without argv\[0\]); `env` looks up an environment variable.
pub fn parse<'a>(
    args: &'a [&'a CStr],
    env: &dyn Fn(&'static str) -> Option<&'a [u8]>,
) -> Result<Parsed<'a>, UsageError<'a>> {
    let mut cli = Cli::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let a = arg.to_bytes();
        i += 1;
        if a == b"--" {
            break;
        }
        if a.starts_with(b"--") {
            // Values are suffixes of the NUL-terminated argument, so they stay `&CStr`.
            let with_nul = arg.to_bytes_with_nul();
            let (name, inline) = match a.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    &a[2..eq],
                    CStr::from_bytes_with_nul(&with_nul[eq + 1..]).ok(),
                ),
                None => (&a[2..], None),
            };
            let spec = SPECS
                .iter()
                .find(|s| s.long.as_bytes() == name)
                .ok_or(UsageError::UnknownOption(a))?;
            let value = match (spec.takes_value, inline) {
                (false, Some(_)) => return Err(UsageError::UnexpectedValue(spec.long)),
                (false, None) => None,
                (true, Some(v)) => Some(v),
                (true, None) => Some(next_value(args, &mut i, spec)?),
            };
            if let Some(early) = apply(&mut cli, spec, value)? {
                return Ok(early_exit(early));
            }
            continue;
        }
        if a.len() > 1 && a[0] == b'-' {
            let with_nul = arg.to_bytes_with_nul();
            let mut j = 1;
            while let Some(&c) = a.get(j) {
                j += 1;
                let spec = SPECS
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or(UsageError::UnknownOption(a))?;
                let value = if !spec.takes_value {
                    None
                } else if j < a.len() {
                    // `-e3`: the rest of the bundle is the value.
                    let v = CStr::from_bytes_with_nul(&with_nul[j..]).ok();
                    j = a.len();
                    v
                } else {
                    Some(next_value(args, &mut i, spec)?)
                };
                if let Some(early) = apply(&mut cli, spec, value)? {
                    return Ok(early_exit(early));
                }
            }
            continue;
        }
        // First non-option: the command starts here.
        i -= 1;
        break;
    }
    let command = args.get(i..).unwrap_or(&[]);

    let mode = match (cli.install, cli.pause) {
        (Some(_), true) => {
            return Err(UsageError::Conflict(
                "--install and --pause cannot be combined",
            ));
        }
        (Some(_), false) if !command.is_empty() => {
            return Err(UsageError::Conflict("--install takes no command"));
        }
        (Some(dest), false) => {
            // --install ignores every other option and the environment.
            return Ok(Parsed {
                config: Config::default(),
                mode: Mode::Install(dest),
            });
        }
        (None, true) if !command.is_empty() => {
            return Err(UsageError::Conflict("--pause takes no command"));
        }
        (None, true) => Mode::Pause,
        (None, false) => Mode::Run(command),
    };
    Ok(Parsed {
        config: merge_env(cli, env)?,
        mode,
    })
}

/// Records one option; returns a mode that ends parsing at once (help, version).
fn apply<'a>(
    cli: &mut Cli<'a>,
    spec: &Spec,
    value: Option<&'a CStr>,
) -> Result<Option<Mode<'a>>, UsageError<'a>> {
    let v = value.map_or(&b""[..], CStr::to_bytes);
    let bad = |reason| UsageError::BadValue {
        option: spec.long,
        value: v,
        reason,
    };
    match spec.opt {
        Opt::Subreaper => cli.subreaper = true,
        Opt::ProcessGroup => cli.process_group = true,
        Opt::WarnReap => cli.warn_reap = true,
        Opt::Verbose => cli.verbose = cli.verbose.saturating_add(1),
        Opt::Pause => cli.pause = true,
        Opt::Version => return Ok(Some(Mode::Version)),
        Opt::Help => return Ok(Some(Mode::Help)),
        Opt::RemapExit => {
            add_codes(cli.remap_exit.get_or_insert_with(RemapExit::default), v).map_err(bad)?
        }
        Opt::Pdeathsig => cli.pdeathsig = Some(parse_pdeathsig(v).map_err(bad)?),
        Opt::Rewrite => cli
            .rewrite
            .get_or_insert_with(Rewrite::default)
            .add_list(v)
            .map_err(|e| bad(e.reason()))?,
        Opt::Grace => cli.grace = Some(parse_duration(v).ok_or_else(|| bad(DURATION_HELP))?),
        Opt::Install => match value {
            Some(dest) if !v.is_empty() => cli.install = Some(dest),
            _ => return Err(bad("expected a file or directory path")),
        },
    }
    Ok(None)
}

const DURATION_HELP: &str = "expected a duration like 2s, 500ms, 1.5s, 1m or 0";

fn parse_pdeathsig(v: &[u8]) -> Result<c_int, &'static str> {
    let sig = signals::parse_signal(v).ok_or("expected a signal name or number")?;
    Ok(sig)
}

fn add_codes(set: &mut RemapExit, list: &[u8]) -> Result<(), &'static str> {
    for item in list.split(|&b| b == b',') {
        let n = signals::parse_small(signals::trim(item))
            .filter(|n| *n <= 255)
            .ok_or("expected exit codes 0-255")?;
        set.insert(n as u8);
    }
    Ok(())
}

/// `2s`, `500ms`, `1.5s`, `1m`, `1h`, `0`, `5` (seconds).
pub fn parse_duration(s: &[u8]) -> Option<Duration> {
    let split = s
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let nanos_per_unit: u128 = match unit {
        b"" | b"s" => 1_000_000_000,
        b"ms" => 1_000_000,
        b"m" => 60_000_000_000,
        b"h" => 3_600_000_000_000,
        _ => return None,
    };
    let (int, frac) = match num.iter().position(|&b| b == b'.') {
        Some(dot) => (&num[..dot], &num[dot + 1..]),
        None => (num, &b""[..]),
    };
    if int.is_empty() || int.len() > 12 || frac.len() > 9 || frac.contains(&b'.') {
        return None;
    }
    if num.contains(&b'.') && frac.is_empty() {
        return None;
    }
    let digits = |d: &[u8]| {
        d.iter()
            .fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'))
    };
    let scale = 10u128.pow(frac.len() as u32);
    let total = (digits(int) * scale + digits(frac)).checked_mul(nanos_per_unit)? / scale;
    let total = u64::try_from(total).ok()?;
    Some(Duration::from_nanos(total))
}

/// Environment names, one per long option (the contract crate holds the spellings).
pub use reaper_contract::init::{
    ENV_GRACE, ENV_PDEATHSIG, ENV_PROCESS_GROUP, ENV_REMAP_EXIT, ENV_REWRITE, ENV_SUBREAPER,
    ENV_TINI_KILL_PROCESS_GROUP, ENV_TINI_SUBREAPER, ENV_VERBOSE, ENV_WARN_REAP,
};

fn merge_env<'a>(
    cli: Cli<'a>,
    env: &dyn Fn(&'static str) -> Option<&'a [u8]>,
) -> Result<Config, UsageError<'a>> {
    // Empty variables count as unset (`REAPER_GRACE=` in a manifest means "default").
    let get = |var| env(var).filter(|v: &&[u8]| !v.is_empty());
    let flag = |var: &'static str| -> Result<bool, UsageError<'a>> {
        match get(var) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or(UsageError::BadEnv {
                var,
                value: v,
                reason: "expected 1/0, true/false, yes/no or on/off",
            }),
        }
    };
    let mut c = Config {
        subreaper: cli.subreaper || flag(ENV_SUBREAPER)? || env(ENV_TINI_SUBREAPER).is_some(),
        process_group: cli.process_group
            || flag(ENV_PROCESS_GROUP)?
            || env(ENV_TINI_KILL_PROCESS_GROUP).is_some(),
        warn_reap: cli.warn_reap || flag(ENV_WARN_REAP)?,
        verbosity: cli.verbose,
        ..Config::default()
    };
    c.remap_exit = match cli.remap_exit {
        Some(r) => r,
        None => {
            let mut r = RemapExit::default();
            if let Some(v) = get(ENV_REMAP_EXIT) {
                add_codes(&mut r, v).map_err(|reason| UsageError::BadEnv {
                    var: ENV_REMAP_EXIT,
                    value: v,
                    reason,
                })?;
            }
            r
        }
    };
    c.pdeathsig = match (cli.pdeathsig, get(ENV_PDEATHSIG)) {
        (Some(s), _) => Some(s),
        (None, Some(v)) => Some(parse_pdeathsig(v).map_err(|reason| UsageError::BadEnv {
            var: ENV_PDEATHSIG,
            value: v,
            reason,
        })?),
        (None, None) => None,
    };
    if c.verbosity == 0
        && let Some(v) = get(ENV_VERBOSE)
    {
        c.verbosity = signals::parse_small(v)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or(UsageError::BadEnv {
                var: ENV_VERBOSE,
                value: v,
                reason: "expected a level 0-255",
            })?;
    }
    c.rewrite = match cli.rewrite {
        Some(r) => r,
        None => {
            let mut r = Rewrite::default();
            if let Some(v) = get(ENV_REWRITE) {
                r.add_list(v)
                    .map_err(|e: RewriteError| UsageError::BadEnv {
                        var: ENV_REWRITE,
                        value: v,
                        reason: e.reason(),
                    })?;
            }
            r
        }
    };
    c.grace = match (cli.grace, get(ENV_GRACE)) {
        (Some(g), _) => g,
        (None, Some(v)) => parse_duration(v).ok_or(UsageError::BadEnv {
            var: ENV_GRACE,
            value: v,
            reason: DURATION_HELP,
        })?,
        (None, None) => DEFAULT_GRACE,
    };
    Ok(c)
}

fn parse_bool(v: &[u8]) -> Option<bool> {
    let is = |word: &[u8]| v.eq_ignore_ascii_case(word);
    if is(b"1") || is(b"true") || is(b"yes") || is(b"on") {
        Some(true)
    } else if is(b"0") || is(b"false") || is(b"no") || is(b"off") {
        Some(false)
    } else {
        None
    }
}

/// The `--help` text.
pub const HELP: &str = "\
usage: reaper [OPTIONS] [--] COMMAND [ARG...]
       reaper --install DEST | --pause | --version | --help

A tiny PID 1: runs COMMAND, forwards signals to it, reaps every zombie, drains
leftover processes when COMMAND exits, and exits with COMMAND's status.

options (each also read from the environment variable shown; the command line wins):
  -s, --subreaper          register as child subreaper (automatic when not PID 1)  REAPER_SUBREAPER=1
  -g, --process-group      run COMMAND in its own process group, signal the group  REAPER_PROCESS_GROUP=1
  -e, --remap-exit CODE    exit 0 when COMMAND exits with CODE (repeatable)        REAPER_REMAP_EXIT=3,4
  -p, --pdeathsig SIGNAL   signal to receive (and forward) when the parent dies    REAPER_PDEATHSIG=TERM
  -w, --warn-reap          log each reaped process that is not COMMAND             REAPER_WARN_REAP=1
  -v, --verbose            more logs on stderr (repeatable)                        REAPER_VERBOSE=2
      --rewrite FROM:TO    forward FROM as TO; TO=0 drops it (repeatable)          REAPER_REWRITE=15:3,2:3
      --grace DURATION     drain time for leftovers after COMMAND exits (2s)       REAPER_GRACE=5s
      --install DEST       copy this binary to DEST (file, or directory -> DEST/reaper)
      --pause              no COMMAND: reap until SIGTERM or SIGINT, then exit 0
  -V, --version            print the version
  -h, --help               print this help
tini's TINI_SUBREAPER and TINI_KILL_PROCESS_GROUP are honoured when set.
REAPER_PLATFORM_ARGV='{\"linux/amd64\":[\"cmd\",...],...}' replaces COMMAND on a matching platform.

exit status: COMMAND's code; 128+N if killed by signal N; 127 command not found;
126 cannot execute; 2 usage error; 1 reaper failure.
";

/// The short usage shown after a usage error.
pub const USAGE: &str = "\
usage: reaper [OPTIONS] [--] COMMAND [ARG...]
       reaper --install DEST | --pause | --version | --help
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::CString;

    /// Parses a space-free list of words with the given environment.
    fn run_with<'a>(
        words: &'a [&'a CStr],
        env: &'a HashMap<&'static str, &'static str>,
    ) -> Result<Parsed<'a>, UsageError<'a>> {
        parse(words, &|k| env.get(k).map(|v| v.as_bytes()))
    }

    fn no_env() -> HashMap<&'static str, &'static str> {
        HashMap::new()
    }

    fn cstrs(words: &[&str]) -> Vec<CString> {
        words.iter().map(|w| CString::new(*w).unwrap()).collect()
    }

    /// Parses `words` and returns (config, command words) for Run mode.
    fn run_ok(words: &[&str], env: &[(&'static str, &'static str)]) -> (Config, Vec<String>) {
        let owned = cstrs(words);
        let refs: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
        let env: HashMap<_, _> = env.iter().copied().collect();
        let p = run_with(&refs, &env).unwrap_or_else(|e| panic!("{words:?}: {e:?}"));
        match p.mode {
            Mode::Run(cmd) => (
                p.config,
                cmd.iter().map(|c| c.to_str().unwrap().to_owned()).collect(),
            ),
            other => panic!("{words:?}: expected Run, got {other:?}"),
        }
    }

    fn err_of(words: &[&str], env: &[(&'static str, &'static str)]) -> String {
        let owned = cstrs(words);
        let refs: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
        let env: HashMap<_, _> = env.iter().copied().collect();
        match run_with(&refs, &env) {
            Ok(p) => panic!("{words:?}: expected an error, got {p:?}"),
            Err(e) => {
                let mut l = Line::bare();
                e.render(&mut l);
                String::from_utf8(l.finish().to_vec())
                    .unwrap()
                    .trim_end()
                    .to_owned()
            }
        }
    }

    #[test]
    fn option_stop_and_double_dash() {
        let (c, cmd) = run_ok(&["sh", "-c", "exit 3"], &[]);
        assert_eq!(cmd, ["sh", "-c", "exit 3"]);
        assert_eq!(c, Config::default());
        let (_, cmd) = run_ok(&["--", "sh", "-c", "x"], &[]);
        assert_eq!(cmd, ["sh", "-c", "x"]);
        let (c, cmd) = run_ok(&["-v", "sh", "-v"], &[]);
        assert_eq!(c.verbosity, 1);
        assert_eq!(cmd, ["sh", "-v"]);
        let (_, cmd) = run_ok(&["--", "--", "x"], &[]);
        assert_eq!(cmd, ["--", "x"]);
        let (_, cmd) = run_ok(&["-", "x"], &[]);
        assert_eq!(cmd, ["-", "x"]);
        let (_, cmd) = run_ok(&[], &[]);
        assert!(cmd.is_empty());
        let (_, cmd) = run_ok(&["-s", "--"], &[]);
        assert!(cmd.is_empty());
    }

    #[test]
    fn long_options_both_forms_and_bundles() {
        let (c, cmd) = run_ok(
            &[
                "--grace=5s",
                "--process-group",
                "--rewrite=TERM:QUIT",
                "-vv",
                "--",
                "app",
                "--grace=1s",
            ],
            &[],
        );
        assert_eq!(c.grace, Duration::from_secs(5));
        assert!(c.process_group);
        assert_eq!(c.rewrite.apply(libc::SIGTERM), libc::SIGQUIT);
        assert_eq!(c.verbosity, 2);
        assert_eq!(cmd, ["app", "--grace=1s"]);

        let (c, _) = run_ok(
            &[
                "--grace",
                "500ms",
                "--rewrite",
                "INT:TERM",
                "--rewrite",
                "HUP:0",
                "x",
            ],
            &[],
        );
        assert_eq!(c.grace, Duration::from_millis(500));
        assert_eq!(c.rewrite.apply(libc::SIGINT), libc::SIGTERM);
        assert_eq!(c.rewrite.apply(libc::SIGHUP), 0);

        let (c, _) = run_ok(&["-sgwv", "-e3", "-e", "4,5", "-pKILL", "x"], &[]);
        assert!(c.subreaper && c.process_group && c.warn_reap);
        assert_eq!(c.verbosity, 1);
        assert!(c.remap_exit.contains(3) && c.remap_exit.contains(4) && c.remap_exit.contains(5));
        assert!(!c.remap_exit.contains(0));
        assert_eq!(c.pdeathsig, Some(libc::SIGKILL));

        let (c, _) = run_ok(
            &[
                "-vp",
                "TERM",
                "--remap-exit=143",
                "--pdeathsig=HUP",
                "--verbose",
                "x",
            ],
            &[],
        );
        assert_eq!(c.pdeathsig, Some(libc::SIGHUP));
        assert_eq!(c.verbosity, 2);
        assert!(c.remap_exit.contains(143));
    }

    #[test]
    fn modes() {
        let parse_words = |w: &[&str]| {
            let owned = cstrs(w);
            let refs: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
            let env = no_env();
            match run_with(&refs, &env) {
                Ok(Parsed {
                    mode: Mode::Install(d),
                    ..
                }) => format!("install {}", d.to_str().unwrap()),
                Ok(Parsed { mode, .. }) => format!("{mode:?}"),
                Err(e) => format!("error {e:?}"),
            }
        };
        assert_eq!(parse_words(&["--help"]), "Help");
        assert_eq!(parse_words(&["-h", "--bogus"]), "Help");
        assert_eq!(parse_words(&["-vh"]), "Help");
        assert_eq!(parse_words(&["--version"]), "Version");
        assert_eq!(parse_words(&["-V"]), "Version");
        assert_eq!(parse_words(&["--pause"]), "Pause");
        assert_eq!(parse_words(&["-s", "--pause", "--"]), "Pause");
        assert_eq!(parse_words(&["--install", "/x/y"]), "install /x/y");
        assert_eq!(parse_words(&["--install=/x/z"]), "install /x/z");
        assert_eq!(parse_words(&["sh", "--help"]), "Run([\"sh\", \"--help\"])");
    }

    #[test]
    fn usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus", "x"], "unknown option '--bogus'"),
            (&["-x", "y"], "unknown option '-x'"),
            (&["-vx"], "unknown option '-vx'"),
            (&["--grace"], "option --grace needs a value"),
            (&["-e"], "option --remap-exit needs a value"),
            (&["--subreaper=1", "x"], "option --subreaper takes no value"),
            (
                &["--grace=soon", "x"],
                "bad value 'soon' for --grace: expected a duration like 2s, 500ms, 1.5s, 1m or 0",
            ),
            (
                &["-e", "256", "x"],
                "bad value '256' for --remap-exit: expected exit codes 0-255",
            ),
            (
                &["-e", "1,", "x"],
                "bad value '1,' for --remap-exit: expected exit codes 0-255",
            ),
            (
                &["-p", "NOPE", "x"],
                "bad value 'NOPE' for --pdeathsig: expected a signal name or number",
            ),
            (
                &["--rewrite", "KILL:TERM", "x"],
                "bad value 'KILL:TERM' for --rewrite: FROM is never forwarded (KILL, STOP, CHLD and fault signals)",
            ),
            (&["--pause", "x"], "--pause takes no command"),
            (&["--install", "/d", "x"], "--install takes no command"),
            (
                &["--install", "/d", "--pause"],
                "--install and --pause cannot be combined",
            ),
            (
                &["--install="],
                "bad value '' for --install: expected a file or directory path",
            ),
        ];
        for (words, want) in cases {
            assert_eq!(err_of(words, &[]), *want, "{words:?}");
        }
    }

    #[test]
    fn environment_fills_gaps_and_cli_wins() {
        let env = [
            (ENV_SUBREAPER, "1"),
            (ENV_PROCESS_GROUP, "true"),
            (ENV_REMAP_EXIT, "3, 4"),
            (ENV_PDEATHSIG, "TERM"),
            (ENV_WARN_REAP, "yes"),
            (ENV_VERBOSE, "2"),
            (ENV_REWRITE, "15:3,2:3"),
            (ENV_GRACE, "5s"),
        ];
        let (c, _) = run_ok(&["x"], &env);
        assert!(c.subreaper && c.process_group && c.warn_reap);
        assert!(c.remap_exit.contains(3) && c.remap_exit.contains(4));
        assert_eq!(c.pdeathsig, Some(libc::SIGTERM));
        assert_eq!(c.verbosity, 2);
        assert_eq!(c.rewrite.apply(15), 3);
        assert_eq!(c.rewrite.apply(2), 3);
        assert_eq!(c.grace, Duration::from_secs(5));

        let (c, _) = run_ok(
            &[
                "--grace=0",
                "-e7",
                "-pHUP",
                "-v",
                "--rewrite=USR1:USR2",
                "x",
            ],
            &env,
        );
        assert_eq!(c.grace, Duration::ZERO);
        assert!(c.remap_exit.contains(7) && !c.remap_exit.contains(3));
        assert_eq!(c.pdeathsig, Some(libc::SIGHUP));
        assert_eq!(c.verbosity, 1);
        assert_eq!(c.rewrite.apply(libc::SIGUSR1), libc::SIGUSR2);
        assert_eq!(c.rewrite.apply(15), 15);

        let (c, _) = run_ok(
            &["x"],
            &[
                (ENV_SUBREAPER, "off"),
                (ENV_PROCESS_GROUP, "0"),
                (ENV_GRACE, ""),
            ],
        );
        assert!(!c.subreaper && !c.process_group);
        assert_eq!(c.grace, DEFAULT_GRACE);

        // tini's variables count when present, whatever their value.
        let (c, _) = run_ok(
            &["x"],
            &[(ENV_TINI_SUBREAPER, ""), (ENV_TINI_KILL_PROCESS_GROUP, "0")],
        );
        assert!(c.subreaper && c.process_group);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        assert_eq!(
            err_of(&["x"], &[(ENV_SUBREAPER, "maybe")]),
            "bad value 'maybe' in REAPER_SUBREAPER: expected 1/0, true/false, yes/no or on/off"
        );
        assert_eq!(
            err_of(&["x"], &[(ENV_GRACE, "forever")]),
            "bad value 'forever' in REAPER_GRACE: expected a duration like 2s, 500ms, 1.5s, 1m or 0"
        );
        assert_eq!(
            err_of(&["x"], &[(ENV_REWRITE, "15")]),
            "bad value '15' in REAPER_REWRITE: expected FROM:TO (e.g. TERM:QUIT), comma-separated"
        );
        assert_eq!(
            err_of(&["x"], &[(ENV_VERBOSE, "lots")]),
            "bad value 'lots' in REAPER_VERBOSE: expected a level 0-255"
        );
        assert!(err_of(&["x"], &[(ENV_REMAP_EXIT, "x")]).contains("REAPER_REMAP_EXIT"));
        assert!(err_of(&["x"], &[(ENV_PDEATHSIG, "x")]).contains("REAPER_PDEATHSIG"));
        // A bad environment does not break --install, --help or --version.
        for words in [&["--install", "/d"][..], &["--help"], &["--version"]] {
            let owned = cstrs(words);
            let refs: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
            let env: HashMap<_, _> = [(ENV_GRACE, "forever")].into_iter().collect();
            assert!(run_with(&refs, &env).is_ok(), "{words:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("5", Some(5000)),
            ("2s", Some(2000)),
            ("500ms", Some(500)),
            ("1.5s", Some(1500)),
            ("0.25s", Some(250)),
            ("1m", Some(60_000)),
            ("1h", Some(3_600_000)),
            ("0ms", Some(0)),
            ("", None),
            ("s", None),
            ("1.s", None),
            (".5s", None),
            ("1..5s", None),
            ("1.2.3s", None),
            ("5x", None),
            ("-1s", None),
            ("1 s", None),
            ("99999999999999h", None),
        ];
        for &(s, want) in cases {
            assert_eq!(
                parse_duration(s.as_bytes()).map(|d| d.as_millis() as u64),
                want,
                "{s:?}"
            );
        }
    }

    #[test]
    fn help_mentions_every_option_and_variable() {
        for spec in SPECS {
            assert!(HELP.contains(&format!("--{}", spec.long)), "{}", spec.long);
        }
        for var in [
            ENV_SUBREAPER,
            ENV_PROCESS_GROUP,
            ENV_REMAP_EXIT,
            ENV_PDEATHSIG,
            ENV_WARN_REAP,
            ENV_VERBOSE,
            ENV_REWRITE,
            ENV_GRACE,
            ENV_TINI_SUBREAPER,
            ENV_TINI_KILL_PROCESS_GROUP,
        ] {
            assert!(HELP.contains(var), "{var}");
        }
    }
}
