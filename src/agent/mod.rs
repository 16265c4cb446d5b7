//! Node agent: zombies per pod and container from /proc.

/// Flags of `reaper-controller agent`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the agent is not implemented yet")]
    NotImplemented,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Run until SIGTERM/SIGINT.
pub async fn run(_args: Args) -> Result<()> {
    Err(Error::NotImplemented)
}
