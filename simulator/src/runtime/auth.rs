//! The simulator's user check: async-opcua's own (the configured users), with every login
//! counted, so tests can see how often a client tries a password the server refuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use opcua::crypto::Thumbprint;
use opcua::server::authenticator::{AuthManager, DefaultAuthenticator, Password, UserToken};
use opcua::server::{ServerEndpoint, ServerUserToken};
use opcua::types::{Error, UserTokenPolicy};

/// Logins with a user name or certificate since the simulator started (across restarts).
#[derive(Debug, Default)]
pub struct Logins {
    pub attempts: AtomicU64,
    pub refused: AtomicU64,
}

/// A snapshot of [`Logins`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStats {
    pub attempts: u64,
    pub refused: u64,
}

impl Logins {
    pub fn stats(&self) -> LoginStats {
        LoginStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn count<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

/// async-opcua's [`DefaultAuthenticator`] with the logins counted.
pub(super) struct CountingAuth {
    inner: DefaultAuthenticator,
    logins: Arc<Logins>,
}

impl CountingAuth {
    pub(super) fn new(users: &[(String, String)], logins: Arc<Logins>) -> CountingAuth {
        let tokens: BTreeMap<String, ServerUserToken> = users
            .iter()
            .map(|(u, p)| (u.clone(), ServerUserToken::user_pass(u.clone(), p.clone())))
            .collect();
        CountingAuth {
            inner: DefaultAuthenticator::new(tokens),
            logins,
        }
    }
}

#[async_trait]
impl AuthManager for CountingAuth {
    async fn authenticate_anonymous_token(&self, endpoint: &ServerEndpoint) -> Result<(), Error> {
        self.inner.authenticate_anonymous_token(endpoint).await
    }

    async fn authenticate_username_identity_token(
        &self,
        endpoint: &ServerEndpoint,
        username: &str,
        password: &Password,
    ) -> Result<UserToken, Error> {
        let r = self
            .inner
            .authenticate_username_identity_token(endpoint, username, password)
            .await;
        self.logins.count(r)
    }

    async fn authenticate_x509_identity_token(
        &self,
        endpoint: &ServerEndpoint,
        signing_thumbprint: &Thumbprint,
    ) -> Result<UserToken, Error> {
        let r = self
            .inner
            .authenticate_x509_identity_token(endpoint, signing_thumbprint)
            .await;
        self.logins.count(r)
    }

    fn user_token_policies(&self, endpoint: &ServerEndpoint) -> Vec<UserTokenPolicy> {
        self.inner.user_token_policies(endpoint)
    }
}
