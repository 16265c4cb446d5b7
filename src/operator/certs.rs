//! Self-managed webhook certificates: a CA and a serving certificate for the webhook Service,
//! rotated before expiry with an overlap, as Kyverno and Gatekeeper do.
//!
//! - [`rotate`] is pure (PEM in, PEM out, the clock passed in): it decides what to issue, add or
//!   drop, and when to look again.
//! - [`CertManager`] is the thin shell: it reads the two Secrets and the
//!   MutatingWebhookConfiguration, calls [`rotate`], and writes back what changed, in an order that
//!   never leaves the webhook serving a certificate the API server does not trust.
//!
//! Where things live:
//! - Secret `<cert-secret>` (type `kubernetes.io/tls`, mounted by the webhook pods): `tls.crt`,
//!   `tls.key` (serving pair) and `ca.crt` (the CA bundle: one CA, two during a rotation).
//! - Secret `<cert-secret>-ca` (never mounted): the current CA's `tls.crt` and `tls.key`.
//! - `caBundle` of every webhook of MutatingWebhookConfiguration `<webhook-config>`: same bundle.
//!
//! Rotation timeline (defaults): the CA lives 365 days and is replaced 60 days before it expires;
//! the serving certificate lives 90 days (never past its CA) and is renewed 30 days before expiry.
//! A CA rotation goes: (1) new CA added to the bundle (old + new) and the MWC; (2) after
//! `--cert-overlap` (10 min: the API server has the new bundle), the serving certificate is
//! reissued by the new CA; (3) another `--cert-overlap` later (webhook pods reloaded the Secret),
//! the old CA leaves the bundle. Renewing a serving certificate from the CA already trusted needs
//! no overlap.
use crate::keys;
use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// Certificates start this much in the past, so a clock slightly behind ours accepts them.
const BACKDATE: Duration = Duration::from_secs(60);
/// Common-name prefix of the CAs (suffixed `@<unix time>` so each CA has a distinct subject).
const CA_COMMON_NAME: &str = "reaper-webhook-ca";

/// Errors of the certificate logic and its API calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate settings: {0}")]
    Settings(String),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "MutatingWebhookConfiguration {0} not found: install the chart's webhook configuration or fix --webhook-config"
    )]
    NoWebhookConfig(String),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Validity periods, thresholds and names (from the operator's flags).
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// Webhook Service name and namespace (the serving certificate's DNS names).
    pub service: String,
    pub namespace: String,
    pub ca_validity: Duration,
    /// Start a CA rotation when the CA has less than this left.
    pub ca_renew_before: Duration,
    pub cert_validity: Duration,
    /// Renew the serving certificate when it has less than this left.
    pub cert_renew_before: Duration,
    /// Minimum time between publishing a CA and serving a certificate it signed, and between
    /// serving a new certificate and dropping the CA of the previous one.
    pub overlap: Duration,
}

impl CertSettings {
    /// Checks that a rotation can always finish before the old CA expires.
    pub fn validate(&self) -> Result<()> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        if self.service.is_empty() || self.namespace.is_empty() {
            return Err(Error::Settings(
                "--webhook-service and the operator namespace must be set".into(),
            ));
        }
        if self.ca_renew_before >= self.ca_validity {
            return Err(Error::Settings(format!(
                "--ca-renew-before {} must be shorter than --ca-validity {}",
                d(self.ca_renew_before),
                d(self.ca_validity)
            )));
        }
        if self.cert_renew_before >= self.cert_validity {
            return Err(Error::Settings(format!(
                "--cert-renew-before {} must be shorter than --cert-validity {}",
                d(self.cert_renew_before),
                d(self.cert_validity)
            )));
        }
        if self.ca_renew_before <= self.cert_renew_before + 2 * self.overlap {
            return Err(Error::Settings(format!(
                "--ca-renew-before {} must exceed --cert-renew-before {} plus twice --cert-overlap {}, \
                 so a CA rotation (add, switch, drop) ends before the old CA expires",
                d(self.ca_renew_before),
                d(self.cert_renew_before),
                d(self.overlap)
            )));
        }
        Ok(())
    }

    /// `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{n}"),
            format!("{s}.{n}.svc"),
            format!("{s}.{n}.svc.cluster.local"),
        ]
    }

    /// Name of the Secret holding the CA (`<cert-secret>-ca`).
    pub fn ca_secret_name(cert_secret: &str) -> String {
        format!("{cert_secret}{}", keys::CA_SECRET_SUFFIX)
    }
}

/// The certificate material as stored (empty strings for missing entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub ca_cert: String,
    pub ca_key: String,
    /// PEM certificates trusted for the webhook (Secret `ca.crt`, MWC `caBundle`).
    pub bundle: String,
    pub cert: String,
    pub key: String,
    pub bundle_changed_at: Option<Timestamp>,
    pub serving_changed_at: Option<Timestamp>,
}

/// One change [`rotate`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new CA, added to the bundle.
    NewCa { reason: &'static str },
    /// The bundle lacked the current CA or held expired certificates.
    BundleRepaired,
    /// A new serving certificate signed by the current CA.
    ServingIssued { reason: &'static str },
    /// CAs other than the current one left the bundle.
    OldCasDropped,
}

/// What [`rotate`] decided.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub stored: Stored,
    pub steps: Vec<Step>,
    /// When the next step may become due.
    pub next_check: Timestamp,
}

/// The facts of one certificate that rotation needs.
#[derive(Clone, Debug)]
struct Cert {
    pem: String,
    der: Vec<u8>,
    not_after: i64,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    dns_names: BTreeSet<String>,
    public_key: Vec<u8>,
    is_ca: bool,
}

/// PEM `CERTIFICATE` blocks of a bundle, in order; text outside blocks is ignored.
fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

fn parse_cert(pem: &str) -> Option<Cert> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    let mut dns_names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                dns_names.insert(n.to_string());
            }
        }
    }
    Some(Cert {
        pem: pem.to_string(),
        der: block.contents.clone(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        dns_names,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// A certificate with its key, when both parse and belong together.
fn parse_pair(cert: &str, key: &str) -> Option<(Cert, KeyPair)> {
    let c = parse_cert(pem_blocks(cert).first()?)?;
    let k = KeyPair::from_pem(key).ok()?;
    (k.public_key_raw() == c.public_key.as_slice()).then_some((c, k))
}

fn odt(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn at_second(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap_or(Timestamp::MAX)
}

fn new_ca(now: Timestamp, validity: Duration) -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{CA_COMMON_NAME}@{}", now.as_second()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = odt(now) - BACKDATE;
    params.not_after = odt(plus(now, validity));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_serving(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: Timestamp,
    not_after: i64,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.get(2).cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = odt(now) - BACKDATE;
    params.not_after = odt(at_second(not_after));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The next state of the certificate material at `now`, and when to look again.
pub fn rotate(stored: &Stored, s: &CertSettings, now: Timestamp) -> Result<Rotation> {
    let t = now.as_second();
    let mut next = stored.clone();
    let mut steps = Vec::new();
    let mut due: Vec<i64> = Vec::new();

    // 1. The CA: replace a missing, broken or expired one, and start a rotation when it nears expiry.
    let current = parse_pair(&stored.ca_cert, &stored.ca_key)
        .filter(|(c, _)| c.is_ca && c.not_after > t)
        .map(|(c, _)| c);
    let ca_reason = match &current {
        None if stored.ca_cert.is_empty() => Some("no CA yet"),
        None => Some("stored CA is unusable or expired"),
        Some(c) if c.not_after - t <= secs(s.ca_renew_before) => Some("CA expires soon"),
        Some(_) => None,
    };
    if let Some(reason) = ca_reason {
        let (cert, key) = new_ca(now, s.ca_validity)?;
        next.ca_cert = cert;
        next.ca_key = key;
        steps.push(Step::NewCa { reason });
    }
    let ca = parse_cert(&next.ca_cert).expect("the CA was just checked or generated");
    due.push(ca.not_after - secs(s.ca_renew_before));

    // 2. The bundle: still-valid CAs, always including the current one (appended last).
    let mut bundle: Vec<Cert> = pem_blocks(&stored.bundle)
        .iter()
        .filter_map(|p| parse_cert(p))
        .filter(|c| c.is_ca && c.not_after > t)
        .collect();
    if !bundle.iter().any(|c| c.der == ca.der) {
        bundle.push(ca.clone());
    }
    let render = |b: &[Cert]| b.iter().map(|c| c.pem.as_str()).collect::<String>();
    if render(&bundle) != stored.bundle {
        next.bundle = render(&bundle);
        next.bundle_changed_at = Some(now);
        if ca_reason.is_none() {
            steps.push(Step::BundleRepaired);
        }
    }

    // 3. The serving certificate. Signing by the current CA is safe once that CA has been in the
    //    bundle for `overlap`, or at once when the current certificate is useless anyway.
    let ca_trusted_since = next.bundle_changed_at.unwrap_or(Timestamp::UNIX_EPOCH);
    let ca_published = plus(ca_trusted_since, s.overlap) <= now;
    let expected: BTreeSet<String> = s.dns_names().into_iter().collect();
    let serving = parse_pair(&stored.cert, &stored.key).map(|(c, _)| c);
    let (reason, broken) = match &serving {
        None => (Some("no usable serving certificate"), true),
        Some(c) if c.not_after <= t => (Some("serving certificate expired"), true),
        Some(c) if !bundle.iter().any(|b| b.subject == c.issuer) => {
            (Some("serving certificate's CA is not in the bundle"), true)
        }
        Some(c) if c.dns_names != expected => (Some("webhook Service DNS names changed"), true),
        Some(c) if c.issuer != ca.subject => (Some("switch to the new CA"), false),
        Some(c) if c.not_after - t <= secs(s.cert_renew_before) => (Some("renewal"), false),
        Some(c) => {
            due.push(c.not_after - secs(s.cert_renew_before));
            (None, false)
        }
    };
    let same_ca = serving.as_ref().is_some_and(|c| c.issuer == ca.subject);
    if let Some(reason) = reason {
        if broken || same_ca || ca_published {
            let not_after = plus(now, s.cert_validity).as_second().min(ca.not_after);
            let (cert, key) =
                issue_serving(&next.ca_cert, &next.ca_key, &s.dns_names(), now, not_after)?;
            next.cert = cert;
            next.key = key;
            next.serving_changed_at = Some(now);
            steps.push(Step::ServingIssued { reason });
            due.push(not_after - secs(s.cert_renew_before));
        } else {
            due.push(plus(ca_trusted_since, s.overlap).as_second());
        }
    }

    // 4. Old CAs leave the bundle once the new serving certificate has been out for `overlap`.
    let serving_by_ca = parse_cert(&next.cert).is_some_and(|c| c.issuer == ca.subject);
    if bundle.len() > 1 && serving_by_ca {
        let since = next.serving_changed_at.unwrap_or(Timestamp::UNIX_EPOCH);
        if plus(since, s.overlap) <= now {
            next.bundle = ca.pem.clone();
            next.bundle_changed_at = Some(now);
            steps.push(Step::OldCasDropped);
        } else {
            due.push(plus(since, s.overlap).as_second());
        }
    }
    // An old CA expiring on its own also changes the bundle.
    due.extend(
        pem_blocks(&next.bundle)
            .iter()
            .filter_map(|p| parse_cert(p))
            .filter(|c| c.der != ca.der)
            .map(|c| c.not_after),
    );

    let next_check = at_second(due.into_iter().min().unwrap_or(i64::MAX).max(t + 1));
    Ok(Rotation {
        stored: next,
        steps,
        next_check,
    })
}

/// Expiry (Unix seconds) of each certificate in a PEM bundle, in order (for tests and logs).
pub fn bundle_expiries(bundle: &str) -> Vec<i64> {
    pem_blocks(bundle)
        .iter()
        .filter_map(|p| parse_cert(p))
        .map(|c| c.not_after)
        .collect()
}

/// Expiry (Unix seconds) of the first certificate in `pem`.
pub fn cert_expiry(pem: &str) -> Option<i64> {
    bundle_expiries(pem).first().copied()
}

/// The PEM certificates of a bundle.
pub fn bundle_certs(bundle: &str) -> Vec<String> {
    pem_blocks(bundle)
}

/// Whether `cert` (PEM) was issued by `ca` (PEM), by subject/issuer name.
pub fn issued_by(cert: &str, ca: &str) -> bool {
    match (parse_cert(cert), parse_cert(ca)) {
        (Some(c), Some(ca)) => c.issuer == ca.subject,
        _ => false,
    }
}

pub use shell::CertManager;

/// The API side: Secrets and the MutatingWebhookConfiguration.
mod shell {
    use super::*;
    use base64::Engine;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use std::collections::BTreeMap;

    const TLS_CRT: &str = "tls.crt";
    const TLS_KEY: &str = "tls.key";

    /// Reads and writes the certificate material of one webhook.
    #[derive(Clone)]
    pub struct CertManager {
        pub settings: CertSettings,
        secrets: Api<Secret>,
        webhooks: Api<MutatingWebhookConfiguration>,
        cert_secret: String,
        webhook_config: String,
    }

    fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    fn text(secret: Option<&Secret>, key: &str) -> String {
        secret
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    }

    fn stamp(secret: Option<&Secret>, key: &str) -> Option<Timestamp> {
        secret
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(|a| a.get(key))
            .and_then(|v| v.parse().ok())
    }

    impl CertManager {
        pub fn new(
            client: kube::Client,
            settings: CertSettings,
            cert_secret: String,
            webhook_config: String,
        ) -> Self {
            Self {
                secrets: Api::namespaced(client.clone(), &settings.namespace),
                webhooks: Api::all(client),
                settings,
                cert_secret,
                webhook_config,
            }
        }

        /// `--cert-secret`.
        pub fn cert_secret(&self) -> &str {
            &self.cert_secret
        }

        /// `--webhook-config`.
        pub fn webhook_config(&self) -> &str {
            &self.webhook_config
        }

        /// One pass: read, [`rotate`], write what changed. Returns the steps taken and when to
        /// run again.
        pub async fn reconcile(&self, now: Timestamp) -> Result<Rotation> {
            let ca_name = CertSettings::ca_secret_name(&self.cert_secret);
            let ca_secret = self
                .secrets
                .get_opt(&ca_name)
                .await
                .map_err(kube_err(format!("reading Secret {ca_name}")))?;
            let serving = self
                .secrets
                .get_opt(&self.cert_secret)
                .await
                .map_err(kube_err(format!("reading Secret {}", self.cert_secret)))?;
            let mwc = self
                .webhooks
                .get_opt(&self.webhook_config)
                .await
                .map_err(kube_err(format!(
                    "reading MutatingWebhookConfiguration {}",
                    self.webhook_config
                )))?
                .ok_or_else(|| Error::NoWebhookConfig(self.webhook_config.clone()))?;
            let stored = Stored {
                ca_cert: text(ca_secret.as_ref(), TLS_CRT),
                ca_key: text(ca_secret.as_ref(), TLS_KEY),
                bundle: text(serving.as_ref(), keys::SECRET_KEY_CA),
                cert: text(serving.as_ref(), TLS_CRT),
                key: text(serving.as_ref(), TLS_KEY),
                bundle_changed_at: stamp(serving.as_ref(), keys::ANNOTATION_BUNDLE_CHANGED_AT),
                serving_changed_at: stamp(serving.as_ref(), keys::ANNOTATION_SERVING_CHANGED_AT),
            };
            let rotation = rotate(&stored, &self.settings, now)?;
            let new = &rotation.stored;
            // Order matters: the CA first (its key is needed again after a crash), then the MWC
            // (the API server must trust a CA before anything signed by it is served), then the
            // serving Secret (what the webhook pods load).
            if (new.ca_cert.as_str(), new.ca_key.as_str())
                != (stored.ca_cert.as_str(), stored.ca_key.as_str())
            {
                self.write_secret(
                    &ca_name,
                    ca_secret,
                    [(TLS_CRT, &new.ca_cert), (TLS_KEY, &new.ca_key)],
                    BTreeMap::new(),
                )
                .await?;
            }
            self.patch_webhooks(&mwc, &new.bundle).await?;
            if *new != stored {
                let mut annotations = BTreeMap::new();
                for (key, at) in [
                    (keys::ANNOTATION_BUNDLE_CHANGED_AT, new.bundle_changed_at),
                    (keys::ANNOTATION_SERVING_CHANGED_AT, new.serving_changed_at),
                ] {
                    if let Some(at) = at {
                        annotations.insert(key.to_string(), at.to_string());
                    }
                }
                self.write_secret(
                    &self.cert_secret,
                    serving,
                    [
                        (TLS_CRT, &new.cert),
                        (TLS_KEY, &new.key),
                        (keys::SECRET_KEY_CA, &new.bundle),
                    ],
                    annotations,
                )
                .await?;
            }
            Ok(rotation)
        }

        /// Creates the Secret, or replaces its data (optimistic: with the resourceVersion read).
        async fn write_secret<const N: usize>(
            &self,
            name: &str,
            existing: Option<Secret>,
            data: [(&str, &String); N],
            annotations: BTreeMap<String, String>,
        ) -> Result<()> {
            let mut secret = existing.unwrap_or_else(|| Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(self.settings.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        keys::LABEL_MANAGED_BY.to_string(),
                        keys::MANAGER_OPERATOR.to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".to_string()),
                ..Default::default()
            });
            let map = secret.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in data {
                map.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
            }
            if !annotations.is_empty() {
                secret
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(annotations);
            }
            let pp = PostParams {
                field_manager: Some(keys::MANAGER_OPERATOR.to_string()),
                ..Default::default()
            };
            if secret.metadata.resource_version.is_some() {
                self.secrets
                    .replace(name, &pp, &secret)
                    .await
                    .map_err(kube_err(format!("updating Secret {name}")))?;
            } else {
                self.secrets
                    .create(&pp, &secret)
                    .await
                    .map_err(kube_err(format!("creating Secret {name}")))?;
            }
            Ok(())
        }

        /// Sets `caBundle` of every webhook that lacks it, guarded by the resourceVersion read.
        async fn patch_webhooks(
            &self,
            mwc: &MutatingWebhookConfiguration,
            bundle: &str,
        ) -> Result<()> {
            let want = bundle.as_bytes();
            let mut ops = vec![serde_json::json!({
                "op": "test", "path": "/metadata/resourceVersion",
                "value": mwc.metadata.resource_version,
            })];
            for (i, w) in mwc.webhooks.iter().flatten().enumerate() {
                if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(want) {
                    ops.push(serde_json::json!({
                        "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                        "value": base64::engine::general_purpose::STANDARD.encode(want),
                    }));
                }
            }
            if ops.len() == 1 {
                return Ok(());
            }
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::Array(ops)).expect("valid JSON patch");
            self.webhooks
                .patch(
                    &self.webhook_config,
                    &PatchParams {
                        field_manager: Some(keys::MANAGER_OPERATOR.to_string()),
                        ..Default::default()
                    },
                    &Patch::Json::<()>(patch),
                )
                .await
                .map_err(kube_err(format!(
                    "patching caBundle of MutatingWebhookConfiguration {}",
                    self.webhook_config
                )))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CertSettings {
        CertSettings {
            service: "reaper-webhook".into(),
            namespace: "reaper-system".into(),
            ca_validity: Duration::from_secs(100),
            ca_renew_before: Duration::from_secs(40),
            cert_validity: Duration::from_secs(30),
            cert_renew_before: Duration::from_secs(10),
            overlap: Duration::from_secs(5),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A fake clock driving `rotate` the way the shell does: state in, state out.
    struct Clock {
        stored: Stored,
        s: CertSettings,
    }

    impl Clock {
        fn at(&mut self, secs: i64) -> Rotation {
            let r = rotate(&self.stored, &self.s, t(secs)).unwrap();
            self.stored = r.stored.clone();
            r
        }
        fn bundle(&self) -> Vec<String> {
            bundle_certs(&self.stored.bundle)
        }
    }

    #[test]
    fn full_rotation_timeline() {
        let mut c = Clock {
            stored: Stored::default(),
            s: settings(),
        };
        // t=0: first CA and serving certificate.
        let r = c.at(0);
        assert_eq!(
            r.steps,
            [
                Step::NewCa {
                    reason: "no CA yet"
                },
                Step::ServingIssued {
                    reason: "no usable serving certificate"
                }
            ]
        );
        let ca1 = c.stored.ca_cert.clone();
        assert_eq!(c.bundle(), std::slice::from_ref(&ca1));
        assert!(issued_by(&c.stored.cert, &ca1));
        let serving = parse_cert(&c.stored.cert).unwrap();
        assert_eq!(
            serving.dns_names,
            [
                "reaper-webhook",
                "reaper-webhook.reaper-system",
                "reaper-webhook.reaper-system.svc",
                "reaper-webhook.reaper-system.svc.cluster.local"
            ]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
        );
        assert_eq!(serving.not_after, t(30).as_second());
        assert_eq!(r.next_check, t(20), "serving renewal is due first");

        // Stable: nothing to do.
        let before = c.stored.clone();
        let r = c.at(10);
        assert!(r.steps.is_empty());
        assert_eq!(c.stored, before);

        // t=20: renewal from the same, trusted CA needs no overlap.
        let r = c.at(20);
        assert_eq!(r.steps, [Step::ServingIssued { reason: "renewal" }]);
        assert!(issued_by(&c.stored.cert, &ca1));
        assert_eq!(r.next_check, t(40));
        c.at(40);

        // t=60: the CA has 40 s left: a new CA joins the bundle; serving stays on the old CA.
        let cert_before = c.stored.cert.clone();
        let r = c.at(60);
        assert_eq!(
            r.steps,
            [Step::NewCa {
                reason: "CA expires soon"
            }]
        );
        let ca2 = c.stored.ca_cert.clone();
        assert_ne!(ca1, ca2);
        assert_eq!(c.bundle(), [ca1.clone(), ca2.clone()], "old + new");
        assert_eq!(c.stored.cert, cert_before);
        assert_eq!(r.next_check, t(65));

        // t=62: the serving certificate is due for renewal, but the new CA is too fresh.
        let r = c.at(62);
        assert!(r.steps.is_empty(), "{:?}", r.steps);
        assert!(issued_by(&c.stored.cert, &ca1));

        // t=65: overlap over: switch to a certificate from the new CA, bundle unchanged.
        let r = c.at(65);
        assert_eq!(
            r.steps,
            [Step::ServingIssued {
                reason: "switch to the new CA"
            }]
        );
        assert!(issued_by(&c.stored.cert, &ca2));
        assert_eq!(c.bundle().len(), 2);
        assert_eq!(r.next_check, t(70));

        // t=70: the old CA leaves the bundle.
        let r = c.at(70);
        assert_eq!(r.steps, [Step::OldCasDropped]);
        assert_eq!(c.bundle(), std::slice::from_ref(&ca2));
        assert_eq!(r.next_check, t(85), "serving (until 95) renews at 85");
    }

    #[test]
    fn serving_certificate_never_outlives_its_ca() {
        let mut c = Clock {
            stored: Stored::default(),
            s: CertSettings {
                cert_validity: Duration::from_secs(1000),
                cert_renew_before: Duration::from_secs(10),
                ca_renew_before: Duration::from_secs(40),
                ..settings()
            },
        };
        c.at(0);
        let serving = parse_cert(&c.stored.cert).unwrap();
        let ca = parse_cert(&c.stored.ca_cert).unwrap();
        assert_eq!(serving.not_after, ca.not_after);
    }

    #[test]
    fn repairs_lost_or_broken_material() {
        let mut c = Clock {
            stored: Stored::default(),
            s: settings(),
        };
        c.at(0);
        let good = c.stored.clone();

        // Bundle wiped (e.g. Secret recreated by hand): the CA goes back in; serving chains to it.
        c.stored.bundle.clear();
        let r = c.at(1);
        assert_eq!(r.steps, [Step::BundleRepaired]);
        assert_eq!(c.bundle(), std::slice::from_ref(&good.ca_cert));
        assert_eq!(c.stored.cert, good.cert);

        // A key that does not match its certificate: reissued at once.
        c.stored.key = KeyPair::generate().unwrap().serialize_pem();
        let r = c.at(2);
        assert_eq!(
            r.steps,
            [Step::ServingIssued {
                reason: "no usable serving certificate"
            }]
        );

        // Service renamed: new names at once.
        c.s.service = "renamed".into();
        let r = c.at(3);
        assert_eq!(
            r.steps,
            [Step::ServingIssued {
                reason: "webhook Service DNS names changed"
            }]
        );
        assert!(
            parse_cert(&c.stored.cert)
                .unwrap()
                .dns_names
                .contains("renamed.reaper-system.svc")
        );

        // CA Secret lost: a new CA; the still-valid old CA stays trusted until the switch.
        c.stored.ca_cert = "garbage".into();
        let r = c.at(4);
        assert_eq!(
            r.steps,
            [Step::NewCa {
                reason: "stored CA is unusable or expired"
            }]
        );
        assert_eq!(c.bundle().len(), 2);
        assert!(issued_by(&c.stored.cert, &good.ca_cert));
        c.at(9);
        assert!(issued_by(&c.stored.cert, &c.stored.ca_cert.clone()));
        c.at(14);
        assert_eq!(c.bundle().len(), 1);

        // Everything expired (operator down for a long time): start over at once.
        let r = c.at(1000);
        assert_eq!(r.steps.len(), 2, "{:?}", r.steps);
        assert_eq!(c.bundle(), [c.stored.ca_cert.clone()]);
        assert!(issued_by(&c.stored.cert, &c.stored.ca_cert.clone()));
    }

    #[test]
    fn settings_are_validated() {
        settings().validate().unwrap();
        let bad = [
            CertSettings {
                ca_renew_before: Duration::from_secs(100),
                ..settings()
            },
            CertSettings {
                cert_renew_before: Duration::from_secs(30),
                ..settings()
            },
            CertSettings {
                overlap: Duration::from_secs(15),
                ..settings()
            },
            CertSettings {
                service: String::new(),
                ..settings()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }

    #[test]
    fn pem_blocks_ignore_surrounding_text() {
        let ca = new_ca(t(0), Duration::from_secs(100)).unwrap().0;
        let text = format!("# comment\n{ca}\nnoise\n{ca}");
        assert_eq!(pem_blocks(&text).len(), 2);
        assert_eq!(bundle_expiries(&text), [t(100).as_second(); 2]);
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nunterminated").is_empty());
    }
}
