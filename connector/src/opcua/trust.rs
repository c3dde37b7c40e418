//! The connector's own check of a PLC's certificate, before a session is made with it.
//!
//! async-opcua 0.19 checks a server certificate against its trust list (`pki/trusted/`,
//! `pki/rejected/`, `trust_unknown_servers`) and the key length for the policy; its further
//! checks want the application URI as the *first* subject alternative name and skip the first
//! name when they look for the host (node-opcua and other stacks put DNS names first), and it
//! knows no CA, chain or CRL. So the client runs with those further checks off and this module
//! does them, per OPC UA Part 4 / 6, on the certificate of the endpoint the session will be
//! pinned to:
//!
//! - validity period; the application URI among the URI names, the host dialled among the DNS
//!   and IP names (in any order); key usage (digital signature, key encipherment) if present;
//! - a certificate issued by a CA whose certificate is in `pki/issuers/` (with the CA's CRL
//!   there, PEM or DER, any file names): the chain verified (signatures, validity, CA
//!   constraints, server-auth usage if restricted) and checked against the CRLs; revoked,
//!   expired, or without a CRL of its CA: refused. An accepted one is copied into `trusted/`
//!   for the stack's own list; a revoked one is taken out of it and copied to `rejected/`;
//! - any other certificate (self-signed, or from a CA not in `issuers/`): the stack's trust
//!   list decides, as before.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use opcua::crypto::{CertificateStore, X509};
use opcua::types::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{KeyUsage, SubjectAltName};
use x509_cert::Certificate;

/// The folder of CA certificates (and their CRLs) whose certificates are trusted.
pub const ISSUERS_DIR: &str = "issuers";

/// Why a server certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// How an acceptable certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Issued by the CA of `pki/issuers/` with this subject.
    Issued(String),
    /// Not from a CA in `issuers/`: the stack's trust list decides.
    List,
}

/// Checks the server certificate `der` of an endpoint whose description names
/// `application_uri`, dialled at `host`, at `now`, with the PKI in `pki`.
pub fn check_server(
    pki: &Path,
    der: &[u8],
    application_uri: &str,
    host: &str,
    now: SystemTime,
) -> Result<Trust, Refusal> {
    let cert = Certificate::from_der(der).map_err(|e| {
        Refusal::new(
            StatusCode::BadCertificateInvalid,
            format!("the server's certificate cannot be read: {e}"),
        )
    })?;
    let tbs = &cert.tbs_certificate;
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (from, until) = (
        tbs.validity.not_before.to_unix_duration(),
        tbs.validity.not_after.to_unix_duration(),
    );
    if unix < from || unix > until {
        return Err(Refusal::new(
            StatusCode::BadCertificateTimeInvalid,
            format!(
                "the server's certificate is valid from {} to {}, not now ({})",
                rfc3339(from),
                rfc3339(until),
                rfc3339(unix)
            ),
        ));
    }
    let names = Names::of(&cert)?;
    if !names.uris.iter().any(|u| u == application_uri) {
        return Err(Refusal::new(
            StatusCode::BadCertificateUriInvalid,
            format!(
                "the server's certificate names the application URIs {:?}, the server says it is {application_uri:?}",
                names.uris
            ),
        ));
    }
    if !names.has_host(host) {
        return Err(Refusal::new(
            StatusCode::BadCertificateHostNameInvalid,
            format!(
                "the server's certificate names the hosts {:?}, not {host:?} of the endpoint URL",
                names.hosts
            ),
        ));
    }
    if let Ok(Some((_, usage))) = tbs.get::<KeyUsage>() {
        if !(usage.digital_signature() && usage.key_encipherment()) {
            return Err(Refusal::new(
                StatusCode::BadCertificateUseNotAllowed,
                "the server's certificate is not for digital signatures and key encipherment (its key usage)",
            ));
        }
    }
    if tbs.issuer == tbs.subject {
        return Ok(Trust::List);
    }
    let issuers = Issuers::read(&pki.join(ISSUERS_DIR));
    match issuers.verify(der, now) {
        Verdict::NotOurs => Ok(Trust::List),
        Verdict::Issued => {
            let issuer = tbs.issuer.to_string();
            store_trusted(pki, der).map_err(|e| {
                Refusal::new(
                    StatusCode::BadUnexpectedError,
                    format!(
                        "cannot copy the certificate into {}/trusted/: {e}",
                        pki.display()
                    ),
                )
            })?;
            Ok(Trust::Issued(issuer))
        }
        Verdict::Refused(r) => {
            if r.status == StatusCode::BadCertificateRevoked {
                untrust(pki, der);
            }
            Err(r)
        }
    }
}

/// The names of a certificate: URIs, and hosts (DNS names and IP addresses).
struct Names {
    uris: Vec<String>,
    hosts: Vec<String>,
}

impl Names {
    fn of(cert: &Certificate) -> Result<Names, Refusal> {
        let san = cert
            .tbs_certificate
            .get::<SubjectAltName>()
            .map_err(|e| {
                Refusal::new(
                    StatusCode::BadCertificateInvalid,
                    format!("the server's certificate has unreadable alternative names: {e}"),
                )
            })?
            .map(|(_, san)| san.0)
            .unwrap_or_default();
        let (mut uris, mut hosts) = (Vec::new(), Vec::new());
        for name in san {
            match name {
                GeneralName::UniformResourceIdentifier(u) => uris.push(u.to_string()),
                GeneralName::DnsName(d) => hosts.push(d.to_string()),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    let addr = match b.len() {
                        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(a) = addr {
                        hosts.push(a.to_string());
                    }
                }
                _ => {}
            }
        }
        Ok(Names { uris, hosts })
    }

    /// `host` (a name, case-insensitive, or an address in any notation) is one of the names.
    fn has_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<std::net::IpAddr> = host.parse().ok();
        self.hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || (ip.is_some() && h.parse().ok() == ip))
    }
}

/// The CA certificates and CRLs of `pki/issuers/`.
struct Issuers {
    certs: Vec<CertificateDer<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
}

enum Verdict {
    /// Not issued by a CA of `issuers/`.
    NotOurs,
    Issued,
    Refused(Refusal),
}

impl Issuers {
    /// Every certificate and CRL in the files under `dir` (PEM, several per file, or DER);
    /// what cannot be read is logged and left out.
    fn read(dir: &Path) -> Issuers {
        let mut out = Issuers {
            certs: Vec::new(),
            crls: Vec::new(),
        };
        for file in files(dir) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let pem_certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
            let pem_crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
            if pem_certs.is_empty() && pem_crls.is_empty() {
                if Certificate::from_der(&bytes).is_ok() {
                    out.certs.push(CertificateDer::from(bytes));
                } else {
                    out.add_crl(&file, &bytes);
                }
                continue;
            }
            out.certs.extend(pem_certs);
            for crl in pem_crls {
                out.add_crl(&file, crl.as_ref());
            }
        }
        out
    }

    fn add_crl(&mut self, file: &Path, der: &[u8]) {
        match webpki::OwnedCertRevocationList::from_der(der) {
            Ok(crl) => self.crls.push(crl.into()),
            Err(e) => tracing::warn!(file = %file.display(), error = ?e,
                "pki/issuers: neither a certificate nor a CRL (version 2) that can be read; left out"),
        }
    }

    /// Verifies `der` against the CAs and their CRLs.
    fn verify(&self, der: &[u8], now: SystemTime) -> Verdict {
        // Anchors: the self-signed CA certificates that are valid now; the others of the
        // folder only complete chains (so an intermediate's revocation by its root counts).
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let anchors: Vec<_> = self
            .certs
            .iter()
            .filter(|c| is_valid_root(c, unix))
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        if anchors.is_empty() {
            return Verdict::NotOurs;
        }
        let leaf = CertificateDer::from(der);
        let Ok(ee) = webpki::EndEntityCert::try_from(&leaf) else {
            return Verdict::Refused(Refusal::new(
                StatusCode::BadCertificateInvalid,
                "the server's certificate cannot be read",
            ));
        };
        let time = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        );
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build()
        });
        let no_crl = revocation.is_none();
        let result = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &self.certs,
            time,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        );
        use webpki::Error as E;
        let (status, reason) = match result {
            Ok(_) if no_crl => (
                StatusCode::BadCertificateRevocationUnknown,
                "issued by a CA in pki/issuers/ that has no CRL there: put the CA's CRL beside it".to_owned(),
            ),
            Ok(_) => return Verdict::Issued,
            Err(E::UnknownIssuer) => return Verdict::NotOurs,
            Err(E::CertRevoked) => (
                StatusCode::BadCertificateRevoked,
                "revoked: its CA's CRL in pki/issuers/ lists it".to_owned(),
            ),
            Err(E::UnknownRevocationStatus) => (
                StatusCode::BadCertificateRevocationUnknown,
                "issued by a CA in pki/issuers/ that has no CRL there: put the CA's CRL beside it".to_owned(),
            ),
            Err(E::CrlExpired { .. }) => (
                StatusCode::BadCertificateRevocationUnknown,
                "the CRL of its CA in pki/issuers/ is past its next update: put a current one there".to_owned(),
            ),
            Err(e @ (E::CertExpired { .. } | E::CertNotValidYet { .. })) => (
                StatusCode::BadCertificateTimeInvalid,
                format!("a certificate of its chain is not valid now: {e:?}"),
            ),
            Err(e) => (
                StatusCode::BadCertificateInvalid,
                format!("its chain to a CA in pki/issuers/ does not verify: {e:?}"),
            ),
        };
        Verdict::Refused(Refusal::new(status, reason))
    }
}

/// A self-signed CA certificate (basic constraints CA, key usage for signing certificates if
/// it says) valid at `unix`.
fn is_valid_root(der: &CertificateDer<'_>, unix: Duration) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    let Ok(cert) = Certificate::from_der(der) else {
        return false;
    };
    let tbs = &cert.tbs_certificate;
    let ca = matches!(tbs.get::<BasicConstraints>(), Ok(Some((_, b))) if b.ca);
    let signs = match tbs.get::<KeyUsage>() {
        Ok(Some((_, u))) => u.key_cert_sign(),
        _ => true,
    };
    let valid = tbs.validity.not_before.to_unix_duration() <= unix
        && unix <= tbs.validity.not_after.to_unix_duration();
    tbs.issuer == tbs.subject && ca && signs && valid
}

/// The files under `dir`, at any depth (`issuers/certs/`, `issuers/crl/` as other stacks lay
/// them out, or flat).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            // Followed: mounted secrets and CA bundles are often links.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The stack's file name of `der` in `trusted/` or `rejected/`.
fn stack_name(der: &[u8]) -> Option<String> {
    X509::from_der(der)
        .ok()
        .map(|x| CertificateStore::cert_file_name(&x))
}

/// Copies `der` into `trusted/` (as the stack names it) unless it is there.
fn store_trusted(pki: &Path, der: &[u8]) -> std::io::Result<()> {
    let Some(name) = stack_name(der) else {
        return Ok(());
    };
    // A first attempt before the CA was there put it in rejected/, which the stack reads first.
    let rejected = pki.join("rejected").join(&name);
    if std::fs::read(&rejected).is_ok_and(|b| b == der) {
        std::fs::remove_file(&rejected)?;
    }
    let path = pki.join("trusted").join(name);
    if std::fs::read(&path).is_ok_and(|b| b == der) {
        return Ok(());
    }
    std::fs::create_dir_all(pki.join("trusted"))?;
    // Whole or not at all: the data and write sessions check at the same time.
    let partial = path.with_extension("der.partial");
    std::fs::write(&partial, der)?;
    std::fs::rename(&partial, &path)
}

/// Takes `der` out of `trusted/` and puts it into `rejected/`.
fn untrust(pki: &Path, der: &[u8]) {
    let Some(name) = stack_name(der) else {
        return;
    };
    let _ = std::fs::remove_file(pki.join("trusted").join(&name));
    let _ = std::fs::create_dir_all(pki.join("rejected"));
    let _ = std::fs::write(pki.join("rejected").join(name), der);
}

fn rfc3339(since_epoch: Duration) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(since_epoch.as_secs() as i64, 0)
        .map_or_else(|| format!("{}s", since_epoch.as_secs()), |t| t.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(hosts: &[&str]) -> Names {
        Names {
            uris: vec!["urn:plc".to_owned()],
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    #[test]
    fn the_host_is_any_dns_name_or_address_in_any_notation() {
        let n = names(&["plc-7.plant.local", "10.1.2.3", "::1"]);
        assert!(n.has_host("PLC-7.plant.local"));
        assert!(n.has_host("10.1.2.3"));
        assert!(n.has_host("[::1]"));
        assert!(n.has_host("0:0:0:0:0:0:0:1"));
        assert!(!n.has_host("plc-8.plant.local"));
        assert!(!n.has_host("10.1.2.4"));
        assert!(!n.has_host("urn:plc"));
    }

    #[test]
    fn what_is_not_a_certificate_is_refused_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let r = check_server(dir.path(), b"not DER", "urn:plc", "plc", SystemTime::now());
        assert_eq!(
            r.map_err(|r| r.status),
            Err(StatusCode::BadCertificateInvalid)
        );
    }
}
