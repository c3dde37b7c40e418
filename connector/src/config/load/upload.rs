//! `[sink.parquet.upload]`: where completed chunks go, with the store's settings checked
//! against the store's own configuration keys (an unknown key is a typo, never ignored) and
//! secrets only by reference; or `via = "iothub"`, the hub's file upload with the `[hub]`
//! identity.

use crate::config::raw::{RawHub, RawUpload, Spanned};
use crate::config::types::{Secret, StoreTarget, UploadConfig, UploadTarget};

use super::{is_env_name, Check, Span};

/// The stores, by URL scheme: what `to` may start with.
const SCHEMES: &str = "az:// (or abfss://), s3://, gs:// or file://";
const SCHEME_NAMES: [&str; 8] = ["az", "azure", "abfs", "abfss", "s3", "s3a", "gs", "file"];

/// Words that make a setting a secret: it must come from `secret_env` or `secret_file`.
const SECRET_WORDS: [&str; 6] = ["secret", "key", "token", "sas", "password", "credential"];

/// Which store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    S3,
    Azure,
    Gcs,
    Local,
}

impl Store {
    fn of(url: &url::Url) -> Option<Store> {
        use object_store::ObjectStoreScheme as S;
        match S::parse(url).ok()?.0 {
            S::AmazonS3 => Some(Store::S3),
            S::MicrosoftAzure => Some(Store::Azure),
            S::GoogleCloudStorage => Some(Store::Gcs),
            S::Local => Some(Store::Local),
            _ => None,
        }
    }

    /// Whether `key` is one of the store's configuration keys.
    fn knows(self, key: &str) -> bool {
        match self {
            Store::S3 => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
            Store::Azure => key.parse::<object_store::azure::AzureConfigKey>().is_ok(),
            Store::Gcs => key.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
            Store::Local => false,
        }
    }
}

impl Check<'_> {
    /// `hub`: the file's `[hub]` section, if any (`via = "iothub"` needs it).
    pub(super) fn upload(
        &mut self,
        raw: &RawUpload,
        parent: Span,
        hub: Option<&RawHub>,
    ) -> Option<UploadConfig> {
        let k = |name: &str| format!("sink.parquet.upload.{name}");
        let keep_local = match &raw.keep_local {
            None => Some(None),
            Some(d) => self.duration(d, &k("keep_local")).map(Some),
        };
        let to = match (&raw.to, &raw.via) {
            (None, None) => {
                let message = "missing: give to (a store URL: az://, s3://, gs://, file://) or via = \"iothub\"";
                self.problem(parent, &k("to"), message);
                None
            }
            (Some(to), Some(_)) => {
                self.at(to, &k("to"), "give to or via, not both");
                None
            }
            (None, Some(via)) => self.via_hub(raw, via, hub),
            (Some(_), None) => self.store(raw).map(UploadTarget::Store),
        };
        Some(UploadConfig {
            to: to?,
            keep_local: keep_local?,
        })
    }

    /// `via = "iothub"`: no store settings; `[hub]` with a device identity.
    fn via_hub(
        &mut self,
        raw: &RawUpload,
        via: &Spanned<String>,
        hub: Option<&RawHub>,
    ) -> Option<UploadTarget> {
        let k = |name: &str| format!("sink.parquet.upload.{name}");
        if via.get_ref() != "iothub" {
            let message = format!(
                "{:?} is not known: the one value is \"iothub\"",
                via.get_ref()
            );
            self.at(via, &k("via"), message);
            return None;
        }
        let mut ok = true;
        let settings = raw
            .options
            .iter()
            .map(|(key, v)| (format!("options.{key}"), v));
        let secrets = raw.secret_env.iter().chain(&raw.secret_file);
        for (key, value) in settings.chain(secrets.map(|(key, v)| (format!("secret_*.{key}"), v))) {
            let message = "IoT Hub's file upload takes no store settings: the hub hands out a SAS URI of its storage account for each chunk";
            self.at(value, &k(&key), message);
            ok = false;
        }
        match hub {
            None => {
                let message = "via = \"iothub\" needs a [hub] section (the device identity that asks the hub for the upload)";
                self.at(via, &k("via"), message);
                ok = false;
            }
            Some(h) => {
                if h.ca_file.is_none() && h.insecure_endpoint.is_some() {
                    let message = "IoT Hub's file upload is HTTPS: [hub] needs ca_file (with insecure_endpoint too: give https_endpoint and ca_file for a test hub)";
                    self.at(via, &k("via"), message);
                    ok = false;
                }
                if let Some(module) = h.x509.as_ref().and_then(|x| x.module_id.as_ref()) {
                    let message = "IoT Hub's file upload is for device identities, not modules: remove via = \"iothub\" or use a device identity";
                    self.at(module, "hub.x509.module_id", message);
                    ok = false;
                }
            }
        }
        ok.then_some(UploadTarget::IotHub)
    }

    /// `to = "<store URL>"` with its settings and secrets.
    fn store(&mut self, raw: &RawUpload) -> Option<StoreTarget> {
        let k = |name: &str| format!("sink.parquet.upload.{name}");
        let to = raw.to.as_ref()?;
        let mut ok = true;
        let store = {
            let url = url::Url::parse(to.get_ref()).ok();
            let named = url.as_ref().filter(|u| SCHEME_NAMES.contains(&u.scheme()));
            let store = named.and_then(Store::of);
            if store.is_none() {
                let message = format!(
                    "{:?} is not a store URL: use {SCHEMES} (or via = \"iothub\")",
                    to.get_ref()
                );
                self.at(to, &k("to"), message);
            } else if named.is_some_and(|u| {
                u.password().is_some() || u.query().is_some() || u.fragment().is_some()
            }) {
                // `to` is shown in logs and the plan: credentials go by reference.
                self.at(to, &k("to"), "the URL carries a password, a query or a fragment: give credentials (a SAS token, keys) in secret_env or secret_file");
                ok = false;
            }
            store
        };
        let mut options = Vec::new();
        for (key, value) in &raw.options {
            let here = k(&format!("options.{key}"));
            ok &= self.store_key(store, key, value, &here);
            if is_secret(key) {
                let message = format!(
                    "{key} is a secret: give it in secret_env or secret_file, never in the file"
                );
                self.at(value, &here, message);
                ok = false;
            }
            self.warn_insecure(key, value, &here);
            options.push((key.clone(), value.get_ref().clone()));
        }
        let mut secrets = Vec::new();
        for (key, var) in &raw.secret_env {
            let here = k(&format!("secret_env.{key}"));
            ok &= self.store_key(store, key, var, &here);
            if is_env_name(var.get_ref()) {
                secrets.push((key.clone(), Secret::Env(var.get_ref().clone())));
            } else {
                let message = format!("{:?} is not an environment variable name", var.get_ref());
                self.at(var, &here, message);
                ok = false;
            }
        }
        for (key, path) in &raw.secret_file {
            let here = k(&format!("secret_file.{key}"));
            ok &= self.store_key(store, key, path, &here);
            match self.non_empty(path, &here) {
                Some(p) => secrets.push((key.clone(), Secret::File(p.into()))),
                None => ok = false,
            }
        }
        for (key, value) in raw.secret_env.iter().chain(&raw.secret_file) {
            if raw.options.contains_key(key)
                || (raw.secret_env.contains_key(key) && raw.secret_file.contains_key(key))
            {
                self.at(value, &k(key), format!("{key} is given more than once"));
                ok = false;
            }
        }
        store?;
        ok.then(|| StoreTarget {
            url: to.get_ref().clone(),
            options,
            secrets,
        })
    }

    /// `key` must be a configuration key of the store (`None`: the URL was already refused).
    fn store_key<T>(
        &mut self,
        store: Option<Store>,
        key: &str,
        at: &Spanned<T>,
        here: &str,
    ) -> bool {
        match store {
            Some(Store::Local) => {
                self.at(at, here, "a file:// store takes no settings");
                false
            }
            Some(s) if !s.knows(key) => {
                let message = format!("unknown setting {key:?} for this store (see the object_store configuration keys in docs/parquet.md)");
                self.at(at, here, message);
                false
            }
            _ => true,
        }
    }

    /// Plain HTTP or unchecked certificates: allowed, said by `check`.
    fn warn_insecure(&mut self, key: &str, value: &Spanned<String>, here: &str) {
        let v = value.get_ref().trim().to_ascii_lowercase();
        let on = matches!(v.as_str(), "true" | "1" | "yes" | "on");
        let message = if key.ends_with("allow_http") && on {
            "plain HTTP to the store (no TLS): chunks and credentials cross the network unprotected; for a local test store only"
        } else if key.ends_with("allow_invalid_certificates") && on {
            "the store's certificate is not checked: anyone on the path can take the uploads"
        } else if key.contains("use_emulator") && on {
            "the Azure Storage emulator (plain HTTP, a published key): for tests only"
        } else if key.contains("endpoint") && v.starts_with("http://") {
            "an http:// endpoint: plain HTTP to the store (no TLS)"
        } else {
            return;
        };
        self.warn(Some(value.span()), here, message);
    }
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}
