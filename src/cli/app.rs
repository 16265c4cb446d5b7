//! The `reaper-controller` command line: one subcommand per role or command. `main` parses it;
//! the generated CLI reference (docs/reference/cli.md) is written from [`Cli::command`]
//! (`clap::CommandFactory`).
use crate::{agent, cli, crd, operator, telemetry, webhook};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "reaper-controller",
    version,
    about = "Reaper: PID 1 done right for every Pod"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mutating admission webhook (HTTPS) that fixes PID 1 of opted-in pods.
    Webhook(Box<webhook::Args>),
    /// Reconciles ReaperPolicy status from ZombieReports; manages webhook certificates.
    Operator(operator::Args),
    /// Node agent: counts zombies per pod and container, publishes a ZombieReport.
    Agent(agent::Args),
    /// Print the CRDs (ReaperPolicy, ZombieReport) as a YAML stream, or write them with --dir.
    Crds(crd::Args),
    /// Apply the webhook's mutation offline to manifests (Pods and workload templates; YAML
    /// stream in, YAML stream out; what happened to each on standard error).
    Inject(cli::inject::Args),
    /// Why the webhook does (or would do) what it does with a pod or a workload's pods: policy,
    /// mode, each container's argv and init, and the patch.
    Explain(Box<cli::explain::Args>),
    /// Is Reaper installed and working (CRDs, webhook and its certificate, agents, policies), which
    /// namespaces are opted in, which containers hold zombies. Exit code 1 on problems.
    Check(cli::check::Args),
}
