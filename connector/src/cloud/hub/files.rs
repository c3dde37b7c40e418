//! IoT Hub's file upload for a device, over HTTPS: the device asks the hub for a blob in the
//! hub's storage account (`POST /devices/{id}/files`, answered with a correlation id and a SAS
//! URI of that blob), uploads the blob there itself, then tells the hub how it went
//! (`POST /devices/{id}/files/notifications`), which releases the correlation and, on
//! success, notifies the hub's back end. Each request carries the device's authentication: a
//! fresh SAS token in `Authorization`, or the X.509 client certificate in the TLS handshake.
//! TLS is the MQTT connection's: the hub's `ca_file` only.
//!
//! Module identities cannot upload files (the hub offers it to devices only).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::connection::{Identity, SecretKey};
use super::{encode_component, sas};

/// The api-version of the file-upload requests.
pub const FILES_API_VERSION: &str = "2021-04-12";

/// How long one request may take; the uploader retries after it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The device side of the hub's file-upload API.
pub struct FileUploads {
    client: reqwest::Client,
    /// `https://{host}/devices/{device}/files`.
    base: String,
    resource: String,
    key: Option<SecretKey>,
    sas_ttl: Duration,
}

/// What the hub grants for one upload (its `Debug` leaves the SAS out).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobGrant {
    /// Names this upload in the notification.
    pub correlation_id: String,
    /// The storage account's blob host (`{account}.blob.core.windows.net`).
    pub host_name: String,
    pub container_name: String,
    /// The blob's name in the container: `{device}/{the name asked for}`.
    pub blob_name: String,
    /// The SAS query of the blob's URI, `?sv=...&sig=...`.
    pub sas_token: String,
}

impl std::fmt::Debug for BlobGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobGrant")
            .field("correlation_id", &self.correlation_id)
            .field("host_name", &self.host_name)
            .field("container_name", &self.container_name)
            .field("blob_name", &self.blob_name)
            .finish_non_exhaustive()
    }
}

impl BlobGrant {
    /// The SAS query's parameters, decoded.
    pub fn sas_pairs(&self) -> Vec<(String, String)> {
        let query = self.sas_token.trim_start_matches('?');
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The account's endpoint, `https://{hostName}` (an emulator's includes the account as
    /// its path: `https://127.0.0.1:10000/devstoreaccount1`).
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.host_name.trim_end_matches('/'))
    }

    /// The storage account's name: the first label of the host, or an emulator's path.
    pub fn account(&self) -> String {
        match self.host_name.split_once('/') {
            Some((_, path)) if !path.is_empty() => path.trim_matches('/').to_owned(),
            _ => self
                .host_name
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// How an upload ended, for the notification.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub success: bool,
    /// An HTTP-like code the back end sees (ours: 200, or the failure's).
    pub status: u16,
    pub description: &'a str,
}

impl FileUploads {
    /// The client of `identity` (a device): `key` signs SAS tokens, or `tls` carries the
    /// X.509 client certificate; `connect_to` replaces the hub's address (tests).
    pub fn new(
        identity: &Identity,
        key: Option<SecretKey>,
        sas_ttl: Duration,
        tls: rustls::ClientConfig,
        connect_to: Option<&str>,
        proxy: Option<reqwest::Proxy>,
    ) -> Result<FileUploads, String> {
        if identity.module_id.is_some() {
            return Err("IoT Hub's file upload is for device identities; this is a module's (use a device identity or another upload)".into());
        }
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("opcua-connector/", env!("CARGO_PKG_VERSION")));
        builder = super::sender::with_proxy(builder, proxy.as_ref());
        if let Some(address) = connect_to {
            use std::net::ToSocketAddrs;
            let addr = address
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("https_endpoint {address:?} is not host:port"))?;
            builder = builder.resolve(&identity.host, addr);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(FileUploads {
            client,
            base: format!(
                "https://{}/devices/{}/files",
                identity.host,
                encode_component(&identity.device_id)
            ),
            resource: identity.resource_uri(),
            key,
            sas_ttl,
        })
    }

    /// A POST with the device's authentication; the answer's body when it is a success.
    async fn post(&self, url: &str, body: serde_json::Value) -> Result<Vec<u8>, String> {
        let mut request = self
            .client
            .post(url)
            .query(&[("api-version", FILES_API_VERSION)])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            let expiry = sas::expiry_unix_s(SystemTime::now(), self.sas_ttl);
            let token = sas::sas_token(&self.resource, key.expose_base64(), expiry, None)
                .map_err(|e| e.to_string())?;
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| describe(&e))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        Err(format!("the hub answered {status}: {text}"))
    }

    /// Asks the hub for a blob named `name` (in the hub's container, under the device id).
    pub async fn grant(&self, name: &str) -> Result<BlobGrant, String> {
        let body = self
            .post(&self.base, serde_json::json!({ "blobName": name }))
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("the hub's answer to the upload request is not a grant: {e}"))
    }

    /// Tells the hub how the upload of `grant` ended.
    pub async fn notify(&self, grant: &BlobGrant, outcome: Outcome<'_>) -> Result<(), String> {
        let body = serde_json::json!({
            "correlationId": grant.correlation_id,
            "isSuccess": outcome.success,
            "statusCode": outcome.status,
            "statusDescription": outcome.description,
        });
        self.post(&format!("{}/notifications", self.base), body)
            .await
            .map(drop)
    }
}

/// A request error with its causes (reqwest's own message says little: "error sending
/// request"); TLS problems are in the causes.
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(host: &str, sas: &str) -> BlobGrant {
        BlobGrant {
            correlation_id: "c".into(),
            host_name: host.into(),
            container_name: "chunks".into(),
            blob_name: "edge-1/line=a/date=2026-11-29/p-1.parquet".into(),
            sas_token: sas.into(),
        }
    }

    #[test]
    fn the_grant_of_the_hub_names_the_account_endpoint_and_sas() {
        let json = r#"{"correlationId":"MjAyNi0xMS0yOV","hostName":"plantdata.blob.core.windows.net",
            "containerName":"edge-uploads","blobName":"line-7/line=a/date=2026-11-29/p-1.parquet",
            "sasToken":"?sv=2018-03-28&sr=b&sig=a%2Bb%2Fc%3D&se=2026-11-29T20%3A00%3A00Z&sp=rw"}"#;
        let g: BlobGrant = serde_json::from_str(json).unwrap();
        assert_eq!(g.endpoint(), "https://plantdata.blob.core.windows.net");
        assert_eq!(g.account(), "plantdata");
        assert_eq!(g.container_name, "edge-uploads");
        assert_eq!(
            g.sas_pairs(),
            vec![
                ("sv".to_owned(), "2018-03-28".to_owned()),
                ("sr".to_owned(), "b".to_owned()),
                ("sig".to_owned(), "a+b/c=".to_owned()),
                ("se".to_owned(), "2026-11-29T20:00:00Z".to_owned()),
                ("sp".to_owned(), "rw".to_owned()),
            ]
        );
        // An emulator's host carries the account as its path.
        let e = grant("127.0.0.1:10000/devstoreaccount1", "sv=1&sig=x");
        assert_eq!(e.endpoint(), "https://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(e.account(), "devstoreaccount1");
        assert_eq!(e.sas_pairs().len(), 2);
    }
}
