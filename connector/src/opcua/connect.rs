//! What a PLC's session is opened with: our client (identity, PKI, limits), the server's
//! endpoint for the configured security and the check of its certificate, the user identity,
//! and why a failure is a refusal (retried slowly) rather than a network failure.

use std::path::Path;
use std::time::Duration;

use opcua::client::{Client, ClientBuilder, IdentityToken};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{EndpointDescription, MessageSecurityMode, StatusCode};
use tracing::info;

use crate::config::{Auth, Pki, Plc, SecurityMode, SecurityPolicy};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("plc {plc}: cannot configure the OPC UA client: {message}")]
    Client { plc: String, message: String },
    #[error("plc {plc}: cannot read the endpoints of {endpoint}: {status}")]
    Endpoints {
        plc: String,
        endpoint: String,
        status: StatusCode,
    },
    #[error(
        "plc {plc}: {endpoint} offers no endpoint with {policy}/{mode} (it offers: {offered})"
    )]
    NoMatchingEndpoint {
        plc: String,
        endpoint: String,
        policy: String,
        mode: String,
        offered: String,
    },
    #[error("plc {plc}: {message}")]
    Auth { plc: String, message: String },
    #[error("plc {plc}: cannot connect: {status}")]
    Connect { plc: String, status: StatusCode },
    #[error("plc {plc}: the {session} session was refused: {cause} ({status})")]
    Refused {
        plc: String,
        session: &'static str,
        status: StatusCode,
        cause: String,
    },
    #[error("plc {plc}: the server certificate of {endpoint} is refused: {reason} ({status})")]
    Certificate {
        plc: String,
        endpoint: String,
        status: StatusCode,
        reason: String,
    },
}

/// Why the server (or we) refused the session, in words a person can act on; `None` for
/// failures that a quick retry may fix (network, a server starting up). A refusal is retried
/// slowly: many PLCs lock an account after a few failed logins.
pub fn refusal(status: StatusCode, pki: &Pki) -> Option<String> {
    let dir = pki.dir.display();
    let cause = match status {
        StatusCode::BadUserAccessDenied
        | StatusCode::BadIdentityTokenInvalid
        | StatusCode::BadIdentityTokenRejected => {
            "the server refused the user identity (wrong user name or password, or a user \
             certificate it does not accept); check [plc.auth]"
                .to_owned()
        }
        StatusCode::BadCertificateUntrusted => format!(
            "the server certificate is not trusted; it was copied to {dir}/rejected/. If it is \
             the right server, move that file to {dir}/trusted/ (or set \
             pki.trust_unknown_servers = true); while it stays in rejected/ the attempts fail \
             with BadSecurityChecksFailed"
        ),
        StatusCode::BadCertificateTimeInvalid | StatusCode::BadCertificateIssuerTimeInvalid => {
            "a certificate is expired or not yet valid (the server's, or ours as the server \
             sees it: check both clocks and both certificates)"
                .to_owned()
        }
        StatusCode::BadCertificateHostNameInvalid => {
            "the server certificate does not name the host in the endpoint URL (use the host \
             name the certificate was issued for)"
                .to_owned()
        }
        StatusCode::BadCertificateUriInvalid => {
            "the application URI in the server certificate does not match the server's \
             description"
                .to_owned()
        }
        StatusCode::BadCertificateRevoked
        | StatusCode::BadCertificateIssuerRevoked
        | StatusCode::BadCertificateRevocationUnknown
        | StatusCode::BadCertificateIssuerRevocationUnknown => {
            "a certificate is revoked (or its revocation cannot be checked)".to_owned()
        }
        StatusCode::BadCertificateInvalid
        | StatusCode::BadCertificateUseNotAllowed
        | StatusCode::BadCertificateIssuerUseNotAllowed
        | StatusCode::BadCertificatePolicyCheckFailed
        | StatusCode::BadSecurityPolicyRejected
        | StatusCode::BadNoValidCertificates => {
            "a certificate is not acceptable (invalid, wrong key usage or key length for the \
             security policy)"
                .to_owned()
        }
        StatusCode::BadSecurityChecksFailed => format!(
            "security checks failed: the server certificate is in {dir}/rejected/ (move it to \
             {dir}/trusted/ to trust it), or its key is too short for the security policy, or \
             the server refused our certificate (trust {dir}/own/cert.der on the server)"
        ),
        _ => return None,
    };
    Some(cause)
}

pub fn ua_policy(p: SecurityPolicy) -> UaPolicy {
    match p {
        SecurityPolicy::None => UaPolicy::None,
        SecurityPolicy::Basic256Sha256 => UaPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => UaPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => UaPolicy::Aes256Sha256RsaPss,
    }
}

pub fn ua_mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// An OPC UA client with our application identity, PKI and limits, retrying a failed
/// connection for ever (the session's owner decides when to give up).
pub fn client(pki: &Pki, plc: &str) -> Result<Client, SessionError> {
    build_client(pki, plc, -1)
}

/// The same client, trying each connection once: for a command that reports a PLC it cannot
/// reach rather than waiting for it (`dtdl`).
pub fn client_trying_once(pki: &Pki, plc: &str) -> Result<Client, SessionError> {
    build_client(pki, plc, 0)
}

fn build_client(pki: &Pki, plc: &str, retry_limit: i32) -> Result<Client, SessionError> {
    ClientBuilder::new()
        .application_name("opcua-connector")
        .application_uri("urn:opcua-connector")
        .product_uri("urn:opcua-connector")
        .create_sample_keypair(true)
        .pki_dir(&pki.dir)
        .trust_server_certs(pki.trust_unknown_servers)
        // The stack's own checks of time, host and application URI want the URI as the first
        // alternative name: `trust` does them, in any order, with CAs and CRLs.
        .verify_server_certs(false)
        .session_retry_limit(retry_limit)
        .session_retry_initial(Duration::from_millis(250))
        .session_retry_max(Duration::from_secs(1))
        .keep_alive_interval(Duration::from_secs(2))
        .recreate_subscriptions(false)
        .session_timeout(120_000)
        .max_message_size(64 << 20)
        .max_chunk_count(4096)
        .max_array_length(1_000_000)
        .max_string_length(16 << 20)
        .max_byte_string_length(16 << 20)
        .client()
        .map_err(|e| SessionError::Client {
            plc: plc.to_owned(),
            message: e.join("; "),
        })
}

/// Creates our application certificate and key (`pki/own`, `pki/private`) if they are
/// missing, once, before the sessions start: the data and write sessions of a first start
/// would otherwise race to create them, and the loser logs a spurious error.
pub fn prepare_pki(pki: &Pki) -> Result<(), SessionError> {
    client(pki, "(all)")?;
    let issuers = pki.dir.join(crate::opcua::trust::ISSUERS_DIR);
    std::fs::create_dir_all(&issuers).map_err(|e| SessionError::Client {
        plc: "(all)".to_owned(),
        message: format!("cannot create {}: {e}", issuers.display()),
    })
}

pub fn identity(plc: &str, auth: &Auth) -> Result<IdentityToken, SessionError> {
    let err = |message: String| SessionError::Auth {
        plc: plc.to_owned(),
        message,
    };
    Ok(match auth {
        Auth::Anonymous => IdentityToken::Anonymous,
        Auth::UserName { username, password } => {
            IdentityToken::new_user_name(username.clone(), password.read("password").map_err(err)?)
        }
        Auth::Certificate {
            cert_file,
            key_file,
        } => {
            for f in [cert_file, key_file] {
                if !Path::new(f).is_file() {
                    return Err(err(format!(
                        "certificate file {} does not exist",
                        f.display()
                    )));
                }
            }
            IdentityToken::new_x509_path(cert_file, key_file)
                .map_err(|e| err(format!("cannot load user certificate: {e}")))?
        }
    })
}

/// Picks the server's endpoint for the configured security, and keeps the URL we dialled:
/// servers advertise their own host name, which is wrong behind NAT, port mappings, tunnels.
/// A secure endpoint's certificate is checked ([`trust`](crate::opcua::trust)) against
/// `pki_dir` first.
pub async fn endpoint(
    client: &Client,
    plc: &Plc,
    pki_dir: &Path,
) -> Result<EndpointDescription, SessionError> {
    let endpoints = client
        .get_server_endpoints_from_url(plc.endpoint.as_str())
        .await
        .map_err(|e| SessionError::Endpoints {
            plc: plc.id.clone(),
            endpoint: plc.endpoint.clone(),
            status: e.status(),
        })?;
    let policy = ua_policy(plc.security_policy);
    let mode = ua_mode(plc.security_mode);
    let found = endpoints
        .iter()
        .find(|e| e.security_policy_uri.as_ref() == policy.to_uri() && e.security_mode == mode);
    match found {
        Some(e) => {
            let mut e = e.clone();
            e.endpoint_url = plc.endpoint.as_str().into();
            check_certificate(plc, pki_dir, &e)?;
            Ok(e)
        }
        None => Err(SessionError::NoMatchingEndpoint {
            plc: plc.id.clone(),
            endpoint: plc.endpoint.clone(),
            policy: policy.to_string(),
            mode: format!("{mode:?}"),
            offered: endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}/{:?}",
                        UaPolicy::from_uri(e.security_policy_uri.as_ref()),
                        e.security_mode
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The endpoint's certificate (the one the session will be pinned to), checked by `trust`.
pub fn check_certificate(
    plc: &Plc,
    pki_dir: &Path,
    e: &EndpointDescription,
) -> Result<(), SessionError> {
    if e.security_mode == MessageSecurityMode::None {
        return Ok(());
    }
    let host = url::Url::parse(&plc.endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let der = e.server_certificate.as_ref();
    let uri = e.server.application_uri.as_ref();
    match crate::opcua::trust::check_server(pki_dir, der, uri, &host, std::time::SystemTime::now())
    {
        Ok(crate::opcua::trust::Trust::Issued(ca)) => {
            info!(plc = %plc.id, issuer = %ca, "server certificate issued by a CA in pki/issuers/, not revoked: trusted");
            Ok(())
        }
        Ok(crate::opcua::trust::Trust::List) => Ok(()),
        Err(r) => Err(SessionError::Certificate {
            plc: plc.id.clone(),
            endpoint: plc.endpoint.clone(),
            status: r.status,
            reason: r.reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_certificate_and_credential_failure_is_a_refusal_network_failures_are_not() {
        let pki = Pki {
            dir: "pki".into(),
            trust_unknown_servers: false,
        };
        for s in [
            StatusCode::BadUserAccessDenied,
            StatusCode::BadIdentityTokenInvalid,
            StatusCode::BadIdentityTokenRejected,
            StatusCode::BadCertificateUntrusted,
            StatusCode::BadCertificateTimeInvalid,
            StatusCode::BadCertificateHostNameInvalid,
            StatusCode::BadCertificateUriInvalid,
            StatusCode::BadCertificateRevoked,
            StatusCode::BadCertificateInvalid,
            StatusCode::BadSecurityChecksFailed,
        ] {
            assert!(refusal(s, &pki).is_some(), "{s} is a refusal");
        }
        for s in [
            StatusCode::BadTimeout,
            StatusCode::BadConnectionClosed,
            StatusCode::BadCommunicationError,
            StatusCode::BadTooManySessions,
        ] {
            assert!(refusal(s, &pki).is_none(), "{s} is retried quickly");
        }
    }
}
