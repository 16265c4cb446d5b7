//! Operator: ReaperPolicy status, Events, restarts, leader election, webhook certificates.
pub mod certs;
pub mod status;

/// Flags of `reaper-controller operator`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the operator is not implemented yet")]
    NotImplemented,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Run until SIGTERM/SIGINT.
pub async fn run(_args: Args) -> Result<()> {
    Err(Error::NotImplemented)
}
