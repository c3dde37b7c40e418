//! Content-MD5 on every upload request to Azure Blob Storage (`az://`, IoT Hub's file upload)
//! and Google Cloud Storage (`gs://`): the store computes the MD5 of what arrived and refuses
//! the request (400) when it differs, so a chunk altered on its way (a faulty NIC, a proxy,
//! memory) is never stored. Each request is checked on its own: a whole blob, each block of
//! a block upload and the block list. object_store 0.12 sets no content checksum for these two
//! stores (for S3 it sends `x-amz-checksum-sha256` itself), so the connector's HTTP client
//! adds it: an `object_store` HTTP connector around its reqwest one.
//!
//! Not with an Azure account key: a SharedKey signature covers Content-MD5 and is made before
//! the request reaches the client, so such requests go unchanged (the size check after the
//! upload remains). SAS tokens (IoT Hub's grants too), Azure AD tokens and GCS are covered.

use async_trait::async_trait;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use md5::{Digest as _, Md5};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpService, ReqwestConnector,
};
use object_store::{ClientOptions, HeaderValue};

/// The connector of a store that checks Content-MD5.
#[derive(Debug, Default)]
pub struct Md5Connector;

impl HttpConnector for Md5Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Md5Service(inner)))
    }
}

#[derive(Debug)]
struct Md5Service(HttpClient);

#[async_trait]
impl HttpService for Md5Service {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let shared_key = request
            .headers()
            .get("authorization")
            .is_some_and(|a| a.as_bytes().starts_with(b"SharedKey"));
        if request.method().as_str() != "PUT" || request.body().content_length() == 0 || shared_key
        {
            return self.0.execute(request).await;
        }
        let (mut parts, body) = request.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let digest = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
        let value = HeaderValue::from_str(&digest)
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        parts.headers.insert("content-md5", value);
        let request = HttpRequest::from_parts(parts, HttpRequestBody::from(bytes));
        self.0.execute(request).await
    }
}
