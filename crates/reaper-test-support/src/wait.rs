//! The one way tests wait: poll a condition until it yields a value, or fail naming what was
//! awaited. Sync ([`until`]) for process tests, async ([`eventually`]) for API tests, and the
//! admin-port readiness probe every component has ([`ready`]).
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it yields a value; panics naming `what` after `timeout`.
pub fn until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    until_every(timeout, Duration::from_millis(20), what, f)
}

/// [`until`] polling every `every`.
pub fn until_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// Awaits `f` every 200 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(timeout, Duration::from_millis(200), what, f).await
}

/// [`eventually`] polling every `every`.
pub async fn eventually_every<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Whether `GET http://<addr><path>` answers 200 (plain HTTP/1.0, 2 s budget).
pub fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains(" 200 ")
}

/// Waits until a component's admin port (`127.0.0.1:<port>`) answers `/readyz` with 200;
/// `log` is printed when it does not within `timeout`.
pub async fn ready(what: &str, port: u16, log: &std::path::Path, timeout: Duration) {
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + timeout;
    loop {
        let a = addr.clone();
        if tokio::task::spawn_blocking(move || http_ok(&a, "/readyz"))
            .await
            .unwrap_or(false)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready on {addr} within {timeout:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
