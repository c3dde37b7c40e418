//! Completed chunks to object storage (`[sink.parquet.upload]`): Azure Blob / ADLS Gen2
//! (`az://`), S3 and S3-compatible stores (`s3://`), Google Cloud Storage (`gs://`) or a
//! mounted file system (`file://`), through the `object_store` crate; or through IoT Hub's
//! file upload (`via = "iothub"`): for each chunk the hub grants a blob of its storage account
//! (a SAS URI, under `{device}/`), the chunk goes there through the same Azure client, and the
//! hub is notified of the outcome; the chunk counts as uploaded once the hub took a success
//! notification.
//!
//! Loss-free and resumable: the line's [`Retention`] index is the list of completed chunks;
//! the uploader takes the oldest one not yet confirmed, uploads it under
//! `<prefix>/line=<line>/date=<date>/<file>.parquet` (the local relative path: a key is never
//! renamed, so an upload repeated after a crash overwrites the same object), checks the
//! stored size, and only then marks it confirmed: a hidden marker `.<file>.uploaded` beside
//! the chunk, written durably, so after SIGKILL or a reboot exactly the unconfirmed chunks
//! are uploaded again. An object already under the key is never overwritten: the same bytes
//! (an upload whose marker a crash prevented) count as uploaded; other bytes (a file name used
//! again after the local chunks were deleted) send the chunk to `<name>.<n>.parquet`, the
//! first free `n`. Failures are retried with back-off and jitter, one chunk at a time in
//! completion order, forever; the rest of the line never waits for them. At a stop, what is
//! pending (the chunk the stop closed) goes up for as long as [`DRAIN`] allows. Local copies are
//! deleted by the retention (`keep_local` after confirmation, or its disk limits, which count
//! an unconfirmed chunk as lost).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::integrity::Md5Connector;
use super::retention::{sync_new, Retention};
use crate::backoff::Backoff;
use crate::cloud::hub::files::{BlobGrant, FileUploads, Outcome};
use crate::cloud::hub::sender::Hub;
use crate::config::{CaRoots, HubConfig, StoreTarget, UploadConfig, UploadTarget};
use crate::metrics::UploadMetrics;
use crate::ratelog::RateLog;

/// Chunks up to this size go up in one request; larger ones in parts of this size.
pub const PART: usize = 16 << 20;

/// How long the uploader goes on after a stop (within the cloud connections' share of it).
const DRAIN: Duration = Duration::from_millis(700);

/// Through IoT Hub, how long the chunk in flight at a stop may take to finish (grant, blob,
/// notification, marker), within the cloud connections' share of the stop; no new one starts.
const HUB_DRAIN: Duration = Duration::from_millis(900);

/// How long one request may take: a part of [`PART`] at about 450 kbit/s (object_store's
/// default, 30 s, would fail every attempt on a slow uplink and hold up every later chunk).
/// `options = { timeout = "..." }` sets it for a store.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The HTTP client's options of every store: [`REQUEST_TIMEOUT`].
fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_timeout(REQUEST_TIMEOUT)
}

/// object_store's own retries of one request, under the uploader's back-off: few and short,
/// so that a failed attempt is reported (counted, logged, gauges updated) within a minute.
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Where chunks go.
pub struct Destination {
    target: Target,
    /// `az://container/prefix` as configured, or "IoT Hub file upload", for messages.
    shown: String,
}

enum Target {
    /// An object store and the key prefix within it.
    Store {
        store: Box<dyn ObjectStore>,
        prefix: ObjectPath,
        /// A `file://` store: its files are synced before a chunk counts as uploaded (the
        /// store's own writes are not).
        local: bool,
    },
    /// IoT Hub's file upload; the blobs' TLS trusts the hub's CA file besides the system's
    /// roots (the storage account's chain is Azure's, as the hub's).
    Hub {
        api: FileUploads,
        roots: Vec<object_store::Certificate>,
    },
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Destination {
    /// The destination of `config`. A store's builder reads the cloud's standard environment
    /// variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`), then the file's `options`, then the secrets
    /// (read here, from the environment or files; never logged). IoT Hub's needs `hub`.
    pub fn open(config: &UploadConfig, hub: Option<&HubConfig>) -> Result<Destination, String> {
        let shown = config.to.to_string();
        let target = match &config.to {
            UploadTarget::Store(s) => store_target(s)?,
            UploadTarget::IotHub => {
                let hub = hub.ok_or("via = \"iothub\" needs [hub]")?;
                let api = Hub::new(hub)
                    .and_then(|h| h.file_uploads())
                    .map_err(|e| e.to_string())?;
                // The system's roots: object_store's client has them already.
                let roots = match &hub.ca_file {
                    None | Some(CaRoots::System) => Vec::new(),
                    Some(CaRoots::File(ca)) => std::fs::read(ca)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| {
                            object_store::Certificate::from_pem_bundle(&pem)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| format!("{}: {e}", ca.display()))?,
                };
                Target::Hub { api, roots }
            }
        };
        Ok(Destination { target, shown })
    }
}

fn store_target(config: &StoreTarget) -> Result<Target, String> {
    let url = url::Url::parse(&config.url).map_err(|e| format!("{}: {e}", config.url))?;
    let mut settings: Vec<(String, String)> = config.options.clone();
    for (key, secret) in &config.secrets {
        let value = secret.read(&format!("sink.parquet.upload.secret_*.{key}"))?;
        settings.push((key.clone(), value));
    }
    let (store, prefix) = build(&url, &settings)?;
    Ok(Target::Store {
        store,
        prefix,
        local: url.scheme() == "file",
    })
}

/// A chunk's path relative to the Parquet directory (`line=<line>/date=<date>/<file>.parquet`)
/// as an object key under `prefix`.
fn key(prefix: &ObjectPath, relative: &Path) -> Result<ObjectPath, String> {
    let mut parts: Vec<String> = prefix.parts().map(|p| p.as_ref().to_owned()).collect();
    for c in relative.components() {
        let part = c.as_os_str().to_str().ok_or("a path that is not UTF-8")?;
        parts.push(part.to_owned());
    }
    Ok(ObjectPath::from_iter(parts))
}

/// The blob a hub's grant names, with a client for it (the grant's SAS; nothing from the
/// environment).
fn granted_blob(
    grant: &BlobGrant,
    roots: &[object_store::Certificate],
) -> Result<(Box<dyn ObjectStore>, ObjectPath), String> {
    let mut options = client_options();
    for root in roots {
        options = options.with_root_certificate(root.clone());
    }
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(grant.account())
        .with_container_name(&grant.container_name)
        .with_endpoint(grant.endpoint())
        .with_sas_authorization(grant.sas_pairs())
        .with_client_options(options)
        .with_http_connector(Md5Connector)
        .with_retry(retries())
        .build()
        .map_err(|e| e.to_string())?;
    let blob = ObjectPath::parse(&grant.blob_name)
        .map_err(|e| format!("the hub granted blob {:?}: {e}", grant.blob_name))?;
    Ok((Box::new(store), blob))
}

/// Builds the store for `url` with `settings` (object_store configuration keys); an unknown
/// key is an error, never ignored.
fn build(
    url: &url::Url,
    settings: &[(String, String)],
) -> Result<(Box<dyn ObjectStore>, ObjectPath), String> {
    use object_store::ObjectStoreScheme as S;
    let (scheme, _) = S::parse(url).map_err(|e| format!("{url}: {e}"))?;
    // The key prefix is the URL's whole path: `az://container/prefix` names the container by
    // its host, as `s3://bucket/prefix` and `gs://bucket/prefix` do (object_store's own
    // parse would take the first segment of an az:// path for the container).
    let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| format!("{url}: {e}"))?;
    let unknown = |k: &str| format!("unknown option {k:?} for {}", url.scheme());
    // A cloud store's builder: the cloud's environment variables, the URL, our retries, one
    // store-specific call, then the settings, each key parsed by the store's own key type.
    macro_rules! configured {
        ($builder:ty $(, $touch:ident($($arg:expr),*))?) => {{
            let mut b = <$builder>::from_env()
                .with_url(url.as_str())
                .with_client_options(client_options())
                .with_retry(retries())
                $(.$touch($($arg),*))?;
            for (k, v) in settings {
                b = b.with_config(k.parse().map_err(|_| unknown(k))?, v);
            }
            Box::new(b.build().map_err(|e| e.to_string())?)
        }};
    }
    let store: Box<dyn ObjectStore> = match scheme {
        // The store checks what it received (x-amz-checksum-sha256) unless told otherwise.
        S::AmazonS3 => configured!(
            object_store::aws::AmazonS3Builder,
            with_checksum_algorithm(object_store::aws::Checksum::SHA256)
        ),
        // The store checks each request's Content-MD5.
        S::MicrosoftAzure => configured!(
            object_store::azure::MicrosoftAzureBuilder,
            with_http_connector(Md5Connector)
        ),
        S::GoogleCloudStorage => configured!(
            object_store::gcp::GoogleCloudStorageBuilder,
            with_http_connector(Md5Connector)
        ),
        S::Local => {
            if let Some((k, _)) = settings.first() {
                return Err(unknown(k));
            }
            // Keys are absolute paths below the directory, which need not exist yet (a NAS
            // that is not mounted at start is a failed upload, retried, not a failed start).
            let dir = url
                .to_file_path()
                .map_err(|()| format!("{url}: not a local path"))?;
            let prefix = ObjectPath::from_absolute_path(&dir).map_err(|e| e.to_string())?;
            let fs = object_store::local::LocalFileSystem::new();
            return Ok((Box::new(fs), prefix));
        }
        other => return Err(format!("{url}: {other:?} is not a supported store")),
    };
    Ok((store, prefix))
}

/// The uploader of one line.
pub struct Uploader {
    pub destination: Destination,
    pub retention: Arc<Retention>,
    /// The Parquet directory (keys are relative to it).
    pub root: PathBuf,
    pub metrics: Arc<UploadMetrics>,
    /// Chunks up to this size go up in one request, larger ones in parts of it ([`PART`];
    /// tests make it small).
    pub part: usize,
    /// A chunk is on its way through the hub (between grant and marker).
    pub busy: std::sync::atomic::AtomicBool,
}

impl Uploader {
    /// Uploads until `stop`, and after it for [`DRAIN`] at most: the upload in flight and
    /// what is pending (the chunk the stop closed) go on; what the drain cuts is done again
    /// at the next start.
    pub async fn run(self, stop: CancellationToken) {
        let drained = async {
            stop.cancelled().await;
            if self.hub() {
                // A grant cut before its notification stays open at the hub (it allows 10 per
                // device) until its SAS expires: let the one in flight finish.
                let _ = tokio::time::timeout(HUB_DRAIN, async {
                    while self.busy.load(Ordering::Acquire) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
            } else {
                tokio::time::sleep(DRAIN).await;
            }
        };
        tokio::select! {
            () = self.work(&stop) => {}
            () = drained => {}
        }
        self.retention.publish_pending(&self.metrics);
    }

    fn hub(&self) -> bool {
        matches!(self.destination.target, Target::Hub { .. })
    }

    fn count(&self, bytes: u64) {
        self.metrics.chunks.fetch_add(1, Ordering::Relaxed);
        self.metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Until `stop` and nothing is pending, or a failure after `stop`.
    async fn work(&self, stop: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let failures_log = RateLog::per_minute();
        info!(to = %self.destination.shown, "uploading completed chunks");
        loop {
            self.retention.publish_pending(&self.metrics);
            if stop.is_cancelled() && self.hub() {
                // Through the hub nothing new starts after a stop (see `run`).
                return;
            }
            let Some((path, bytes)) = self.retention.first_pending() else {
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.retention.added() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            match self.upload(&path, bytes).await {
                Ok(()) => {
                    backoff.reset();
                    self.count(bytes);
                }
                Err(Failure::Gone) => {
                    // Deleted behind the index's back (by hand): nothing left to upload.
                    self.retention.forget(&path);
                }
                Err(Failure::Retry(e)) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_wait();
                    if let Some(more) = failures_log.hit() {
                        warn!(chunk = %path.display(), to = %self.destination.shown, error = %e,
                            retry_in_s = wait.as_secs_f64(), suppressed = more,
                            "upload failed; retrying (the chunk stays on disk until confirmed)");
                    }
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Uploads one chunk, checks it, marks it confirmed.
    async fn upload(&self, path: &Path, bytes: u64) -> Result<(), Failure> {
        let relative = path.strip_prefix(&self.root).map_err(|_| {
            Failure::Retry(format!(
                "{} is not under {}",
                path.display(),
                self.root.display()
            ))
        })?;
        match &self.destination.target {
            Target::Store {
                store,
                prefix,
                local,
            } => {
                let key = key(prefix, relative).map_err(Failure::Retry)?;
                if let Some(key) = free_key(&**store, key, path, bytes).await? {
                    self.put(&**store, &key, path, bytes).await?;
                    if *local {
                        let file = Path::new("/").join(key.as_ref());
                        sync_new(&file, false).map_err(|e| Failure::Retry(e.to_string()))?;
                    }
                }
                self.confirm(path)
            }
            Target::Hub { api, roots } => {
                let name = key(&ObjectPath::default(), relative).map_err(Failure::Retry)?;
                self.busy.store(true, Ordering::Release);
                let done = self.through_hub(api, roots, &name, path, bytes).await;
                self.busy.store(false, Ordering::Release);
                done
            }
        }
    }

    /// The hub's flow for one chunk: a grant for its name (or, when a blob of other bytes
    /// holds it, for the next free `<name>.<n>.parquet`), the upload, the notification;
    /// confirmed once the hub took the success notification. A failed upload is notified as
    /// such (releasing the grant) and retried with a new grant.
    async fn through_hub(
        &self,
        api: &FileUploads,
        roots: &[object_store::Certificate],
        name: &ObjectPath,
        path: &Path,
        bytes: u64,
    ) -> Result<(), Failure> {
        for n in 0..=MAX_RENAMES {
            let grant = api
                .grant(numbered(name, n).as_ref())
                .await
                .map_err(Failure::Retry)?;
            let result = async {
                let (store, blob) = granted_blob(&grant, roots).map_err(Failure::Retry)?;
                match occupant(&*store, &blob, path, bytes).await? {
                    Occupant::Other => Ok(false),
                    Occupant::Same => Ok(true),
                    Occupant::Free => self.put(&*store, &blob, path, bytes).await.map(|()| true),
                }
            }
            .await;
            // The back end sees the error: its first 256 characters.
            let error: String = match &result {
                Err(Failure::Retry(e)) => e.chars().take(256).collect(),
                _ => String::new(),
            };
            let outcome = match &result {
                Ok(true) => Outcome {
                    success: true,
                    status: 200,
                    description: "uploaded",
                },
                Ok(false) => Outcome {
                    success: false,
                    status: 409,
                    description:
                        "a blob of other bytes has this name: the chunk goes under another",
                },
                Err(Failure::Gone) => Outcome {
                    success: false,
                    status: 410,
                    description: "the local chunk was deleted",
                },
                Err(Failure::Retry(_)) => Outcome {
                    success: false,
                    status: 500,
                    description: &error,
                },
            };
            let notified = api.notify(&grant, outcome).await;
            match result {
                Ok(true) => {
                    notified.map_err(|e| {
                        Failure::Retry(format!(
                            "uploaded, but the hub did not take the notification: {e}"
                        ))
                    })?;
                    return self.confirm(path);
                }
                Ok(false) => {
                    // The hub must have released the grant before another is asked for.
                    notified.map_err(Failure::Retry)?;
                }
                // The upload's error says more than a failed notification.
                Err(e) => return Err(e),
            }
        }
        Err(Failure::Retry(format!(
            "no free name for {name} ({MAX_RENAMES} taken)"
        )))
    }

    /// Puts the chunk at `path` under `key`: in one request, or in parts when it is larger
    /// than a part; then checks the size the store holds.
    async fn put(
        &self,
        store: &dyn ObjectStore,
        key: &ObjectPath,
        path: &Path,
        bytes: u64,
    ) -> Result<(), Failure> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Failure::Gone),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let io = |e: std::io::Error| Failure::Retry(e.to_string());
        let os = |e: object_store::Error| Failure::Retry(e.to_string());
        if bytes as usize <= self.part {
            let mut data = Vec::with_capacity(bytes as usize);
            file.read_to_end(&mut data).await.map_err(io)?;
            store.put(key, PutPayload::from(data)).await.map_err(os)?;
        } else {
            let upload = store.put_multipart(key).await.map_err(os)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part);
            let mut buf = vec![0u8; self.part.min(1 << 20)];
            let sent = async {
                loop {
                    let n = file.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        return Ok(());
                    }
                    writer.wait_for_capacity(2).await.map_err(os)?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                // The parts sent so far are given up at the store, not left to be billed.
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
                Ok(()) => {
                    writer.finish().await.map_err(os)?;
                }
            }
        }
        // What the store holds is what we have.
        let meta = store.head(key).await.map_err(os)?;
        if meta.size != bytes {
            return Err(Failure::Retry(format!(
                "the store holds {} bytes of {key}, the chunk has {bytes}",
                meta.size
            )));
        }
        Ok(())
    }

    fn confirm(&self, path: &Path) -> Result<(), Failure> {
        self.retention
            .confirmed(path)
            .map_err(|e| Failure::Retry(format!("cannot mark {} uploaded: {e}", path.display())))
    }
}

/// How many other names a chunk may try when blobs of other bytes hold its name.
const MAX_RENAMES: u32 = 100;

/// What a key holds, seen from a chunk of `bytes` at `path`.
enum Occupant {
    Free,
    /// The same bytes: uploaded before (its marker lost to a crash).
    Same,
    /// Other bytes (a file name used again after the local chunks were deleted).
    Other,
}

async fn occupant(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
    bytes: u64,
) -> Result<Occupant, Failure> {
    let os = |e: object_store::Error| Failure::Retry(e.to_string());
    match store.head(key).await {
        Err(object_store::Error::NotFound { .. }) => Ok(Occupant::Free),
        Err(e) => Err(os(e)),
        Ok(meta) if meta.size != bytes => Ok(Occupant::Other),
        Ok(_) => {
            let stored = store
                .get(key)
                .await
                .map_err(os)?
                .bytes()
                .await
                .map_err(os)?;
            let local = match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Failure::Gone),
                Err(e) => return Err(Failure::Retry(e.to_string())),
            };
            Ok(if stored.as_ref() == local.as_slice() {
                Occupant::Same
            } else {
                Occupant::Other
            })
        }
    }
}

/// `key` itself for 0, else `<name>.<n>.parquet` beside it.
fn numbered(key: &ObjectPath, n: u32) -> ObjectPath {
    if n == 0 {
        return key.clone();
    }
    let name = key.filename().unwrap_or("chunk.parquet");
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    let mut parts: Vec<String> = key.parts().map(|p| p.as_ref().to_owned()).collect();
    parts.pop();
    parts.push(format!("{stem}.{n}.parquet"));
    ObjectPath::from_iter(parts)
}

/// Where a chunk of `bytes` at `path` goes: `key` if nothing is stored there; `None` if the
/// same bytes are (uploaded before, its marker lost to a crash); else `<name>.<n>.parquet`
/// for the first `n` that is free or holds the same bytes. Never an overwrite.
async fn free_key(
    store: &dyn ObjectStore,
    key: ObjectPath,
    path: &Path,
    bytes: u64,
) -> Result<Option<ObjectPath>, Failure> {
    for n in 0..=MAX_RENAMES {
        let candidate = numbered(&key, n);
        match occupant(store, &candidate, path, bytes).await? {
            Occupant::Free => return Ok(Some(candidate)),
            Occupant::Same => return Ok(None),
            Occupant::Other => {}
        }
    }
    Err(Failure::Retry(format!(
        "no free key for {key} ({MAX_RENAMES} taken)"
    )))
}

enum Failure {
    /// The local chunk no longer exists.
    Gone,
    Retry(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn an_object_is_never_overwritten_and_the_same_bytes_count_as_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-1.parquet");
        std::fs::write(&path, b"new chunk").unwrap();
        let store = InMemory::new();
        let key = ObjectPath::from("x/line=a/date=2026-11-29/p-1.parquet");
        // Free: the key itself.
        assert_eq!(
            free_key(&store, key.clone(), &path, 9).await.ok().flatten(),
            Some(key.clone())
        );
        // The same bytes there: nothing to do.
        store
            .put(&key, PutPayload::from_static(b"new chunk"))
            .await
            .unwrap();
        assert!(matches!(
            free_key(&store, key.clone(), &path, 9).await,
            Ok(None)
        ));
        // Other bytes of the same size, then of another size: the next free names.
        store
            .put(&key, PutPayload::from_static(b"old chunk"))
            .await
            .unwrap();
        let one = ObjectPath::from("x/line=a/date=2026-11-29/p-1.1.parquet");
        assert_eq!(
            free_key(&store, key.clone(), &path, 9).await.ok().flatten(),
            Some(one.clone())
        );
        store
            .put(&one, PutPayload::from_static(b"older"))
            .await
            .unwrap();
        let two = ObjectPath::from("x/line=a/date=2026-11-29/p-1.2.parquet");
        assert_eq!(
            free_key(&store, key, &path, 9).await.ok().flatten(),
            Some(two)
        );
    }
}
