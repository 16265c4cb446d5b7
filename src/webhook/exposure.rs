//! Who may call `/mutate`, and how much of the webhook one client can hold.
//!
//! Any pod can reach the webhook's Service. Without these bounds a client could make it use
//! another namespace's pull secrets, trigger registry fetches, or hold connections and workers.
//! The API server is the only legitimate caller: with `--client-ca-file` every other client is
//! refused at the TLS handshake. Whatever the caller, connections and requests in flight are
//! capped and refused at once beyond the cap (the API server then applies the webhook's
//! `failurePolicy`, `Ignore` in the chart, instead of queueing behind a slow client), and a
//! request must be read and answered within `--request-timeout`.
use std::path::PathBuf;
use std::time::Duration;

/// Streams one HTTP/2 connection may have open at once (the API server multiplexes its
/// admission calls over few connections; Go's default is 250, which one client could fill).
pub const MAX_H2_STREAMS: u32 = 64;
/// Largest request head: HTTP/1 read buffer and HTTP/2 header list (an AdmissionReview request
/// carries a handful of short headers).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Flags bounding the admission endpoint.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "exposure")]
pub struct Args {
    /// Require a TLS client certificate signed by a CA in this PEM file: only the API server
    /// (configured to present one, see docs/security.md) may call the webhook. Read at start.
    #[arg(long, env = "REAPER_CLIENT_CA_FILE", value_name = "PEM")]
    pub client_ca_file: Option<PathBuf>,
    /// Admission requests handled at once; more are answered 503 at once.
    #[arg(long, env = "REAPER_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Open client connections; more are closed as soon as they are accepted.
    #[arg(long, env = "REAPER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Time to read one request (HTTP/1 headers, also while a kept-alive connection waits for
    /// its next request; then the body) and answer it.
    #[arg(long, env = "REAPER_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            client_ca_file: None,
            max_in_flight: 256,
            max_connections: 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the bounds were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--request-timeout must be between 100ms and 30s (the API server waits 30 s at most)")]
    Timeout,
    #[error("--client-ca-file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

impl Args {
    /// Checks the numbers (the CA file is read by [`super::tls::client_roots`]).
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == 0 {
            return Err(Error::Zero("max-in-flight"));
        }
        if self.max_connections == 0 {
            return Err(Error::Zero("max-connections"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(30)).contains(&self.request_timeout) {
            return Err(Error::Timeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_nonsense_is_refused() {
        let ok = Args::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut Args)| {
            let mut a = Args::default();
            f(&mut a);
            a.validate().unwrap_err().to_string()
        };
        assert_eq!(
            bad(|a| a.max_in_flight = 0),
            "--max-in-flight must be at least 1"
        );
        assert_eq!(
            bad(|a| a.max_connections = 0),
            "--max-connections must be at least 1"
        );
        assert!(bad(|a| a.request_timeout = Duration::from_secs(31)).contains("30s"));
        assert!(bad(|a| a.request_timeout = Duration::ZERO).contains("100ms"));
    }
}
