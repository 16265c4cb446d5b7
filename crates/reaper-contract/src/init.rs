//! The `reaper` init's command line and environment, as the webhook writes them into pods and
//! as the init parses them. Long options are spelled without the leading `--`.

/// The binary's file name (in its image at `/reaper`, in a wrapped pod at `<mount path>/reaper`).
pub const BINARY: &str = "reaper";
/// Where the webhook mounts the reaper in wrapped containers unless told otherwise.
pub const DEFAULT_MOUNT_PATH: &str = "/.reaper";
/// Ends the init's options; the command follows.
pub const END_OF_OPTIONS: &str = "--";

/// `--grace DURATION`: drain time after the main child exits.
pub const OPT_GRACE: &str = "grace";
/// `--process-group` (`-g`): run the child in its own process group, signal the group.
pub const OPT_PROCESS_GROUP: &str = "process-group";
/// `--rewrite FROM:TO`: forward signal FROM as TO.
pub const OPT_REWRITE: &str = "rewrite";
/// `--verbose` (`-v`, repeatable).
pub const OPT_VERBOSE: &str = "verbose";
/// `--install DEST`: copy the binary to DEST (the injected init container runs this).
pub const OPT_INSTALL: &str = "install";
/// `--pause`: no child; reap what is re-parented, exit 0 on SIGTERM/SIGINT.
pub const OPT_PAUSE: &str = "pause";
/// `--subreaper` (`-s`).
pub const OPT_SUBREAPER: &str = "subreaper";
/// `--remap-exit CODE` (`-e`).
pub const OPT_REMAP_EXIT: &str = "remap-exit";
/// `--pdeathsig SIGNAL` (`-p`).
pub const OPT_PDEATHSIG: &str = "pdeathsig";
/// `--warn-reap` (`-w`).
pub const OPT_WARN_REAP: &str = "warn-reap";
/// `--version` (`-V`).
pub const OPT_VERSION: &str = "version";
/// `--help` (`-h`).
pub const OPT_HELP: &str = "help";

/// Environment names, one per option that has one (`REAPER_<LONG NAME>`, `-` as `_`); the
/// command line wins over the environment, an empty variable counts as unset.
pub const ENV_SUBREAPER: &str = "REAPER_SUBREAPER";
pub const ENV_PROCESS_GROUP: &str = "REAPER_PROCESS_GROUP";
pub const ENV_REMAP_EXIT: &str = "REAPER_REMAP_EXIT";
pub const ENV_PDEATHSIG: &str = "REAPER_PDEATHSIG";
pub const ENV_WARN_REAP: &str = "REAPER_WARN_REAP";
pub const ENV_VERBOSE: &str = "REAPER_VERBOSE";
pub const ENV_REWRITE: &str = "REAPER_REWRITE";
pub const ENV_GRACE: &str = "REAPER_GRACE";
/// Env var of a wrapped container whose image's platforms run different argvs: JSON object
/// `os/arch[/variant]` → argv, read by the reaper at start and removed from the child's
/// environment.
pub const ENV_PLATFORM_ARGV: &str = "REAPER_PLATFORM_ARGV";
/// tini's spellings, honoured when set at all (as tini does).
pub const ENV_TINI_SUBREAPER: &str = "TINI_SUBREAPER";
pub const ENV_TINI_KILL_PROCESS_GROUP: &str = "TINI_KILL_PROCESS_GROUP";
