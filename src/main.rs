//! `reaper-controller`: one binary, one subcommand per role. Flag parsing and dispatch only.
use anyhow::Context;
use clap::Parser;
use reaper::cli::app::{Cli, Command};
use reaper::{agent, cli, crd, operator, telemetry, webhook};

// glibc malloc spent ~20 % of the webhook's CPU under load (perf, bench/webhook.sh); mimalloc
// handles the many short-lived allocations of JSON decoding far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
