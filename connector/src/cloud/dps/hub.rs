//! The hub destination whose identity DPS assigns. Its task, on the hub's sender thread:
//!
//! 1. The cached assignment of this registration, if any; else registers with DPS, retried
//!    with back-off (errors 1 s doubling to 1 min; refusals and failures 5 s doubling to
//!    5 min; 429 after its `retry-after`), and caches what DPS assigned.
//! 2. Sets the identity in use ([`CurrentIdentity`]: the encoders' topics, the resolution of
//!    each buffered message's topic when it is sent, the write state's identity) and runs the
//!    hub's sender ([`sender::session`]) with it: the same device key (SAS) or certificate.
//! 3. When the hub refuses that identity (CONNACK not authorized / bad credentials, or our
//!    certificate refused in the handshake), drops the cache and goes back to 1. Network
//!    errors never do (a hub outage does not cause registrations). A registration right
//!    after one the hub refused waits 5 s doubling to 5 min, so that a hub that refuses
//!    whatever DPS assigns does not cause a registration storm.
//!
//! Nothing buffered is lost at any step: the buffer rewinds at every ConnAck, and the
//! encoders never wait for any of it (telemetry accumulates on disk meanwhile).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::cache::{self, Assignment, Cached, Mismatch, Registration};
use super::protocol;
use super::register::{self, RegisterError};
use crate::backoff::Backoff;
use crate::cloud::hub::sender::Hub;
use crate::cloud::hub::{CurrentIdentity, Identity, SecretKey};
use crate::cloud::mqtt::flow::Sending;
use crate::cloud::mqtt::sender::{self, server_certificate_failed, Ended};
use crate::config::{DpsConfig, DpsCredential, HubConfig};
use crate::metrics::DpsMetrics;

/// The hub destination with a DPS identity, before it runs.
pub struct DpsHub {
    hub: HubConfig,
    dps: DpsConfig,
    cache: PathBuf,
    current: CurrentIdentity,
    metrics: Arc<DpsMetrics>,
    /// The cached assignment of this registration, read at start.
    cached: Option<Assignment>,
}

impl DpsHub {
    /// Reads the cache of `buffer_dir`: an assignment of this registration and credential
    /// becomes the identity in use at once; one of another (ID scope, registration id, kind of
    /// credential, key or certificate) is ignored (logged).
    pub fn new(
        hub: &HubConfig,
        dps: &DpsConfig,
        buffer_dir: &Path,
        metrics: Arc<DpsMetrics>,
    ) -> DpsHub {
        let mut this = DpsHub {
            hub: hub.clone(),
            dps: dps.clone(),
            cache: cache::path(buffer_dir),
            current: CurrentIdentity::default(),
            metrics,
            cached: None,
        };
        this.cached = this.read_cache();
        if let Some(a) = &this.cached {
            this.current.set(identity(a));
        }
        this
    }

    /// The cached assignment, if it was made for this registration and credential.
    fn read_cache(&self) -> Option<Assignment> {
        let (path, dps) = (self.cache.display(), &self.dps);
        let kind = dps.credential.kind();
        let a = match cache::load(&self.cache) {
            Cached::None => return None,
            Cached::Found(a) => a,
            Cached::Unreadable(why) => {
                self.metrics.cache_errors.fetch_add(1, Ordering::Relaxed);
                warn!(cache = %path, error = %why,
                    "dps: the cached assignment cannot be read: not used, registering");
                return None;
            }
        };
        // A credential that cannot be read now cannot sign for the hub either: registering
        // reports why (logged there once).
        let fingerprint = match self.credential() {
            Ok((_, f)) => f,
            Err(e) => {
                debug!(cache = %path, error = %e,
                    "dps: the cached assignment is not checked: the credential cannot be read");
                return None;
            }
        };
        let this = Registration {
            id_scope: &dps.id_scope,
            registration_id: &dps.registration_id,
            credential: kind,
            credential_fingerprint: &fingerprint,
        };
        match a.check(&this) {
            Ok(()) => Some(a),
            Err(Mismatch::Registration) => {
                info!(cache = %path, cached_id_scope = %a.id_scope,
                    cached_registration_id = %a.registration_id, cached_credential = %a.credential,
                    id_scope = %dps.id_scope, registration_id = %dps.registration_id, credential = kind,
                    "dps: the cached assignment is for another registration: not used, registering");
                None
            }
            Err(Mismatch::Credential) => {
                info!(cache = %path, registration_id = %dps.registration_id, credential = kind,
                    cached_fingerprint = %a.credential_fingerprint, fingerprint = %fingerprint,
                    "dps: the cached assignment was made with another key or certificate: not used, registering");
                None
            }
        }
    }

    /// The credential as configured now: the device key (`None` with X.509) and its
    /// fingerprint ([`cache::fingerprint`]: of the device key, derived from the group key for
    /// a group, or of the certificate's DER).
    fn credential(&self) -> Result<(Option<SecretKey>, String), String> {
        if let DpsCredential::X509 { cert_file, .. } = &self.dps.credential {
            use rustls::pki_types::pem::PemObject as _;
            let cert = rustls::pki_types::CertificateDer::from_pem_file(cert_file)
                .map_err(|e| format!("dps.x509.cert_file {}: {e}", cert_file.display()))?;
            return Ok((None, cache::fingerprint(&cert)));
        }
        let key = self.device_key()?.ok_or("no device key")?;
        let fingerprint = cache::fingerprint(key.expose_base64().as_bytes());
        Ok((Some(key), fingerprint))
    }

    /// The identity in use (none until the first assignment).
    pub fn current(&self) -> CurrentIdentity {
        self.current.clone()
    }

    /// The device key (base64) that signs the SAS tokens: the configured one, or the one
    /// derived from the group key; `None` with X.509. The error names the key, never its
    /// value.
    fn device_key(&self) -> Result<Option<SecretKey>, String> {
        let (secret, key) = match &self.dps.credential {
            DpsCredential::X509 { .. } => return Ok(None),
            DpsCredential::SymmetricKey(s) => (s, "dps.symmetric_key"),
            DpsCredential::GroupKey(s) => (s, "dps.group_key"),
        };
        let text = secret.read(key)?;
        let text = text.trim();
        let device = match &self.dps.credential {
            DpsCredential::GroupKey(_) => {
                protocol::derive_device_key(text, &self.dps.registration_id)
                    .map_err(|e| format!("{key}: {e}"))?
            }
            _ => text.to_owned(),
        };
        SecretKey::new(&device)
            .map(Some)
            .map_err(|_| format!("{key}: the key is not base64"))
    }

    /// Where DPS is, for messages.
    fn endpoint(&self) -> String {
        let (host, port) = register::address(&self.dps);
        format!("{host}:{port}")
    }

    /// Runs the hub destination until `sending.shutdown`.
    pub async fn run(mut self, mut sending: Sending) {
        let shutdown = sending.shutdown.clone();
        let mut assignment = self.cached.take();
        if assignment.is_some() {
            self.metrics.cache_used.fetch_add(1, Ordering::Relaxed);
        }
        // The first session after start may use a cached identity the hub has since dropped:
        // registering again then is no storm.
        let mut from_cache = assignment.is_some();
        let mut again = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let mut setup_errors = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let mut logged_setup: Option<String> = None;
        let mut hub_certificate = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let mut logged_refusal: Option<String> = None;
        loop {
            let a = match assignment.take() {
                Some(a) => a,
                None => match self.provision(&shutdown).await {
                    Some(a) => a,
                    None => return,
                },
            };
            let hub = match self.hub(&a) {
                Ok(h) => h,
                Err(e) => {
                    // The credential or the hub's TLS files: logged once per cause, retried.
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    if logged_setup.as_deref() != Some(e.as_str()) {
                        error!(hub = %a.assigned_hub, device = %a.device_id, error = %e,
                            "dps: cannot connect to the assigned hub; retrying with a back-off up to 5 min");
                        logged_setup = Some(e);
                    }
                    assignment = Some(a);
                    if sleep_or_stop(setup_errors.next_wait(), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.current.set(hub.identity().clone());
            let opts = match hub.options() {
                Ok(o) => o,
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    let e = e.to_string();
                    if logged_setup.as_deref() != Some(e.as_str()) {
                        error!(hub = %a.assigned_hub, error = %e,
                            "dps: cannot connect to the assigned hub; retrying with a back-off up to 5 min");
                        logged_setup = Some(e);
                    }
                    assignment = Some(a);
                    if sleep_or_stop(setup_errors.next_wait(), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            setup_errors.reset();
            logged_setup = None;
            sending.renew = hub.renewer();
            if let Some(c) = sending.control.as_mut() {
                // The assigned device's cloud-to-device messages.
                c.set_identity_subscription(hub.c2d_filter());
            }
            let ended = sender::session(opts, &mut sending, true).await;
            let first = std::mem::replace(&mut from_cache, false);
            let Ended::Refused { error, connected } = ended else {
                return;
            };
            if connected {
                hub_certificate.reset();
            }
            if server_certificate_failed(&error) {
                // Our check of the hub's certificate: DPS cannot mend that (the CA file can).
                let wait = hub_certificate.next_wait();
                if hub_certificate.failures() == 1 {
                    error!(hub = %a.assigned_hub, error = %error,
                        "dps: the assigned hub's certificate fails the check with [hub] ca_file; retrying with a back-off up to 5 min (telemetry stays buffered)");
                }
                assignment = Some(a);
                if sleep_or_stop(wait, &shutdown).await {
                    return;
                }
                continue;
            }
            self.metrics.reprovisions.fetch_add(1, Ordering::Relaxed);
            let wait = if connected || first {
                again.reset();
                Duration::ZERO
            } else {
                again.next_wait()
            };
            if connected {
                // Accepted in between: a refusal now is news again.
                logged_refusal = None;
            }
            let refusal = format!("{}/{}: {error}", a.assigned_hub, a.device_id);
            if logged_refusal.as_deref() != Some(refusal.as_str()) {
                warn!(hub = %a.assigned_hub, device = %a.device_id, error = %error,
                    was_accepted = connected, wait_s = wait.as_secs_f64(),
                    "dps: the hub refused the identity DPS assigned: registering again (telemetry stays buffered)");
                logged_refusal = Some(refusal);
            }
            if let Err(e) = cache::remove(&self.cache) {
                self.metrics.cache_errors.fetch_add(1, Ordering::Relaxed);
                error!(cache = %self.cache.display(), error = %e,
                    "dps: cannot remove the refused assignment from the cache");
            }
            if sleep_or_stop(wait, &shutdown).await {
                return;
            }
        }
    }

    /// The hub connection of assignment `a`: the device key (SAS) or the certificate.
    fn hub(&self, a: &Assignment) -> Result<Hub, String> {
        let cert = match &self.dps.credential {
            DpsCredential::X509 {
                cert_file,
                key_file,
            } => Some((cert_file.clone(), key_file.clone())),
            _ => None,
        };
        let key = self.device_key()?;
        Ok(Hub::assigned(&self.hub, identity(a), key, cert))
    }

    /// Registers until DPS assigns the device (then cached) or shutdown (`None`). Retried
    /// with back-off; each distinct cause logged once.
    async fn provision(&self, shutdown: &CancellationToken) -> Option<Assignment> {
        let m = &self.metrics;
        let mut errors = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut refusals = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let mut logged: Option<String> = None;
        let (scope, registration) = (&self.dps.id_scope, &self.dps.registration_id);
        info!(endpoint = %self.endpoint(), id_scope = %scope, registration_id = %registration,
            credential = self.dps.credential.kind(), "dps: registering");
        loop {
            // The fingerprint cached is that of the credential this registration uses.
            let (outcome, fingerprint) = match self.credential() {
                Ok((key, f)) => {
                    let key = key.as_ref().map(SecretKey::expose_base64);
                    (
                        register::register(&self.dps, key, &m.polls, shutdown).await,
                        f,
                    )
                }
                Err(e) => (Err(RegisterError::Error(e)), String::new()),
            };
            let wait = match &outcome {
                Ok((hub, device)) => {
                    m.assigned.fetch_add(1, Ordering::Relaxed);
                    let a = Assignment {
                        id_scope: scope.clone(),
                        registration_id: registration.clone(),
                        credential: self.dps.credential.kind().to_owned(),
                        credential_fingerprint: fingerprint,
                        assigned_hub: hub.clone(),
                        device_id: device.clone(),
                        assigned_at: chrono::Utc::now()
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    };
                    info!(hub = %hub, device = %device, registration_id = %registration,
                        "dps: assigned");
                    if let Err(e) = cache::store(&self.cache, &a) {
                        m.cache_errors.fetch_add(1, Ordering::Relaxed);
                        error!(cache = %self.cache.display(), error = %e,
                            "dps: cannot cache the assignment; the next start registers again");
                    }
                    return Some(a);
                }
                Err(RegisterError::Stopped) => return None,
                Err(RegisterError::Refused(_)) => {
                    m.refused.fetch_add(1, Ordering::Relaxed);
                    refusals.next_wait()
                }
                Err(RegisterError::Failed(_)) => {
                    m.failed.fetch_add(1, Ordering::Relaxed);
                    refusals.next_wait()
                }
                Err(RegisterError::Throttled(after)) => {
                    m.throttled.fetch_add(1, Ordering::Relaxed);
                    errors.next_wait().max(*after)
                }
                Err(RegisterError::Error(_)) => {
                    m.errors.fetch_add(1, Ordering::Relaxed);
                    errors.next_wait()
                }
            };
            if let Err(e) = outcome {
                let cause = e.to_string();
                if logged.as_deref() != Some(cause.as_str()) {
                    error!(endpoint = %self.endpoint(), id_scope = %scope, registration_id = %registration,
                        error = %cause, retry_in_s = wait.as_secs_f64(),
                        "dps: registration failed; retrying with a back-off (telemetry stays buffered)");
                    logged = Some(cause);
                }
            }
            if sleep_or_stop(wait, shutdown).await {
                return None;
            }
        }
    }
}

/// The hub identity of an assignment (a device; DPS assigns no modules).
fn identity(a: &Assignment) -> Identity {
    Identity {
        host: a.assigned_hub.clone(),
        device_id: a.device_id.clone(),
        module_id: None,
    }
}

/// Sleeps `wait`; true when shutdown came first.
async fn sleep_or_stop(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.cancelled() => true,
    }
}
