//! `reaper-controller`: one binary, one subcommand per role. Flag parsing and dispatch only.
use anyhow::Context;
use clap::{Parser, Subcommand};
use reaper::{agent, cli, crd, operator, telemetry, webhook};

// glibc malloc spent ~20 % of the webhook's CPU under load (perf, bench/webhook.sh); mimalloc
// handles the many short-lived allocations of JSON decoding far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "reaper-controller",
    version,
    about = "Reaper: PID 1 done right for every Pod"
)]
struct Cli {
    #[command(flatten)]
    log: telemetry::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Crds(args) = &cli.command {
        match &args.dir {
            Some(dir) => {
                for path in crd::write_dir(dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
            None => print!("{}", crd::render_yaml().context("rendering CRDs")?),
        }
        return Ok(());
    }
    if let Command::Inject(args) = &cli.command {
        return cli::inject::run(args).context("inject");
    }
    telemetry::init(&cli.log).context("invalid --log-level")?;
    // rustls needs one process-wide crypto provider; ring is the one kube is built with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Webhook(args) => webhook::run(*args).await.context("webhook"),
            Command::Operator(args) => operator::run(args).await.context("operator"),
            Command::Agent(args) => agent::run(args).await.context("agent"),
            Command::Explain(args) => cli::explain::run(*args).await.context("explain"),
            Command::Check(args) => {
                if cli::check::run(args).await.context("check")? {
                    Ok(())
                } else {
                    std::process::exit(1)
                }
            }
            Command::Crds(_) | Command::Inject(_) => unreachable!("handled above"),
        }
    })
}
