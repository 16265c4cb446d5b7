//! The skeleton every role (webhook, operator, agent) runs in: the flags they all have, the
//! admin server, and one supervisor for their long-lived tasks.
//!
//! A long-lived task (the HTTPS server, a reflector, the scan loop, the certificate loop, the
//! admin server itself) must not end or panic while the process carries on: a process that
//! answers `/livez` while doing nothing is worse than one that restarts. So a task spawned with
//! [`Tasks::spawn`] that ends before shutdown marks the component failed: `/livez` answers 503
//! naming the task, and [`Component::run_until`] returns the failure, which `main` turns into a
//! non-zero exit (the kubelet restarts the container either way).
use crate::admin::{self, Liveness, Readiness};
use crate::metrics::Metrics;
use futures::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Flags every role has (flattened into each role's `Args`).
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// Plain-HTTP admin port: `/metrics`, `/livez`, `/readyz`.
    #[arg(long, env = "REAPER_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
}

/// Why a component stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on the admin address {addr}: {source} (is --admin-listen taken?)")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("task {task} {how}; stopping so the kubelet restarts this container")]
    TaskEnded { task: &'static str, how: String },
}

/// A supervised task that ended before shutdown, and how.
struct Ended {
    task: &'static str,
    how: String,
}

/// Spawns supervised tasks (cheap to clone, hand it to whatever starts long-lived work).
#[derive(Clone)]
pub struct Tasks {
    ended: mpsc::UnboundedSender<Ended>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Spawns a task that must run until shutdown; returning or panicking earlier fails the
    /// component.
    pub fn spawn<F>(&self, task: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ended = self.ended.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let how = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(()) => "ended".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            if !shutdown.is_cancelled() {
                let _ = ended.send(Ended { task, how });
            }
        });
    }

    /// Spawns a task whose result is an error when it fails (reported like an early end).
    pub fn spawn_fallible<F, E>(&self, task: &'static str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let ended = self.ended.clone();
        let shutdown = self.shutdown.clone();
        self.spawn(task, async move {
            if let Err(e) = fut.await
                && !shutdown.is_cancelled()
            {
                let _ = ended.send(Ended {
                    task,
                    how: format!("failed: {e}"),
                });
                // Reported; wait so the generic "ended" is not sent as well.
                std::future::pending::<()>().await;
            }
        });
    }

    /// Fires when the component shuts down (or fails).
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Tasks outside a [`Component`] (tests, tools): stopped by `shutdown`; an early end is only
    /// logged.
    pub fn detached(shutdown: CancellationToken) -> Self {
        let (ended, mut rx) = mpsc::unbounded_channel::<Ended>();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                tracing::warn!(task = e.task, how = %e.how, "a detached task stopped");
            }
        });
        Self {
            ended,
            shutdown,
            tracker: TaskTracker::new(),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_string())
}

/// A running role: its metrics registry, health, shutdown token and supervised tasks.
pub struct Component {
    pub role: &'static str,
    pub metrics: Metrics,
    pub ready: Readiness,
    live: Liveness,
    tasks: Tasks,
    ended: mpsc::UnboundedReceiver<Ended>,
    /// Where the admin server listens (the bound address: port 0 resolves here).
    pub admin_addr: SocketAddr,
}

impl Component {
    /// Binds the admin address (failing at once when it is taken) and serves `/metrics`,
    /// `/livez` and `/readyz` from a supervised task.
    pub async fn start(
        role: &'static str,
        admin: &AdminArgs,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(admin.admin_listen)
            .await
            .map_err(|source| Error::AdminBind {
                addr: admin.admin_listen,
                source,
            })?;
        let admin_addr = listener.local_addr().unwrap_or(admin.admin_listen);
        let (tx, ended) = mpsc::unbounded_channel();
        let tasks = Tasks {
            ended: tx,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let ready = Readiness::default();
        let live = Liveness::default();
        let router = admin::router(metrics.clone(), ready.clone(), live.clone());
        let shutdown = tasks.shutdown();
        tracing::info!(addr = %admin_addr, role, "admin server listening");
        tasks.spawn_fallible("admin server", async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        Ok(Self {
            role,
            metrics,
            ready,
            live,
            tasks,
            ended,
            admin_addr,
        })
    }

    /// The spawner for this component's long-lived tasks.
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// The shutdown token every task watches.
    pub fn shutdown(&self) -> CancellationToken {
        self.tasks.shutdown()
    }

    /// Runs until `stop` resolves (a signal, a test) or a supervised task ends early; then marks
    /// the component not ready, cancels every task, and gives them `drain` to finish.
    pub async fn run_until(
        mut self,
        stop: impl Future<Output = ()>,
        drain: Duration,
    ) -> Result<(), Error> {
        let failure = tokio::select! {
            _ = stop => {
                tracing::info!(role = self.role, "shutting down");
                None
            }
            Some(e) = self.ended.recv() => {
                tracing::error!(role = self.role, task = e.task, how = %e.how, "a long-lived task stopped");
                self.live.fail(format!("task {} {}", e.task, e.how));
                Some(e)
            }
        };
        self.ready.set(false);
        self.tasks.shutdown.cancel();
        // Let tasks drain (connections, in-flight batches) within the budget.
        self.tasks.tracker.close();
        if tokio::time::timeout(drain, self.tasks.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                role = self.role,
                ?drain,
                "tasks still running after the drain budget"
            );
        }
        match failure {
            Some(Ended { task, how }) => Err(Error::TaskEnded { task, how }),
            None => Ok(()),
        }
    }
}

/// Parses a role's flags as `main` would (for the roles' flag tests).
#[cfg(test)]
pub fn parse_flags<A: clap::Args>(argv: &[&str]) -> Result<A, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    Cli::<A>::try_parse_from(std::iter::once("reaper-controller").chain(argv.iter().copied()))
        .map(|c| c.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AdminArgs {
        AdminArgs {
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        }
    }

    async fn livez(addr: SocketAddr) -> (u16, String) {
        let text = reqwest_like_get(addr, "/livez").await;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// A minimal HTTP/1.0 GET (the library has no HTTP client of its own).
    async fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_panicking_task_fails_liveness_and_the_run() {
        let c = Component::start("test", &args(), Metrics::new())
            .await
            .unwrap();
        let addr = c.admin_addr;
        assert_eq!(livez(addr).await.0, 200);
        let tasks = c.tasks();
        let live = c.live.clone();
        tasks.spawn("scan loop", async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("byte index 1000 is not a char boundary");
        });
        let err = c
            .run_until(std::future::pending(), Duration::from_secs(1))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("task scan loop panicked: byte index 1000"),
            "{msg}"
        );
        assert!(live.failure().unwrap().contains("scan loop"));
    }

    #[tokio::test]
    async fn a_task_that_returns_early_or_fails_stops_the_component() {
        let c = Component::start("test", &args(), Metrics::new())
            .await
            .unwrap();
        c.tasks().spawn("reflector", async {});
        let err = c
            .run_until(std::future::pending(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("task reflector ended"), "{err}");

        let c = Component::start("test", &args(), Metrics::new())
            .await
            .unwrap();
        c.tasks()
            .spawn_fallible("cert loop", async { Err::<(), _>("secret forbidden") });
        let err = c
            .run_until(std::future::pending(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("task cert loop failed: secret forbidden"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_requested_stop_is_not_a_failure_and_tasks_see_it() {
        let c = Component::start("test", &args(), Metrics::new())
            .await
            .unwrap();
        let tasks = c.tasks();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = tasks.shutdown();
        tasks.spawn("server", async move {
            shutdown.cancelled().await;
            let _ = tx.send(());
        });
        c.run_until(async {}, Duration::from_secs(1)).await.unwrap();
        rx.await.expect("the task saw the shutdown");
    }

    #[tokio::test]
    async fn a_taken_admin_port_is_an_error_at_start() {
        let c = Component::start("a", &args(), Metrics::new())
            .await
            .unwrap();
        let taken = AdminArgs {
            admin_listen: c.admin_addr,
        };
        let err = Component::start("b", &taken, Metrics::new())
            .await
            .err()
            .expect("bind fails");
        assert!(err.to_string().contains("--admin-listen"), "{err}");
    }
}
