//! `[sink.parquet.upload]`.

use super::*;

/// MINIMAL plus `[sink.parquet.upload]`; its first key is on line 15 (the header on 14).
fn with_upload(body: &str) -> String {
    format!("{MINIMAL}\n[sink.parquet.upload]\n{body}\n")
}

fn upload_of(body: &str) -> (UploadConfig, Vec<String>) {
    let c = parse(Path::new(FILE), &with_upload(body)).unwrap_or_else(|e| panic!("{e}"));
    let warnings = c.warnings.iter().map(ToString::to_string).collect();
    (c.parquet.unwrap().upload.unwrap(), warnings)
}

fn store_of(u: &UploadConfig) -> &StoreTarget {
    match &u.to {
        UploadTarget::Store(s) => s,
        other => panic!("not a store: {other:?}"),
    }
}

#[test]
fn a_store_with_settings_and_secrets_by_reference() {
    let (u, warnings) = upload_of(
        "to = \"s3://plant-data/edge/line-a\"\nkeep_local = \"24h\"\n\
         options = { aws_region = \"eu-central-1\" }\n\
         secret_env = { aws_access_key_id = \"S3_ID\" }\n\
         secret_file = { aws_secret_access_key = \"/etc/opcua-connector/s3.secret\" }",
    );
    assert_eq!(store_of(&u).url, "s3://plant-data/edge/line-a");
    assert_eq!(u.keep_local, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(
        store_of(&u).options,
        vec![("aws_region".into(), "eu-central-1".into())]
    );
    assert_eq!(
        store_of(&u).secrets,
        vec![
            ("aws_access_key_id".into(), Secret::Env("S3_ID".into())),
            (
                "aws_secret_access_key".into(),
                Secret::File("/etc/opcua-connector/s3.secret".into())
            ),
        ]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    for to in [
        "az://chunks/plant",
        "abfss://c@acct.dfs.core.windows.net/p",
        "gs://b/p",
        "file:///mnt/nas/opcua",
    ] {
        let (u, _) = upload_of(&format!("to = \"{to}\""));
        assert_eq!(store_of(&u).url, to);
        assert_eq!(u.keep_local, None, "kept by default");
    }
}

#[test]
fn typos_unknown_stores_and_inline_secrets_are_refused_every_one_at_once() {
    let text = with_upload(
        "to = \"ftp://nas/opcua\"\noptions = { aws_regoin = \"x\" }\nkeep_local = \"1d\"",
    );
    let all = problems(&text);
    assert!(
        all.iter()
            .any(|p| p.contains("line.toml:15: sink.parquet.upload.to")
                && p.contains("not a store URL")),
        "{all:?}"
    );
    let text = with_upload(
        "to = \"s3://b/p\"\noptions = { aws_regoin = \"x\", aws_secret_access_key = \"hunter2\" }\n\
         secret_env = { aws_access_key_id = \"not a name\" }",
    );
    let all = problems(&text);
    assert!(
        all.iter()
            .any(|p| p.contains("options.aws_regoin") && p.contains("unknown setting")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|p| p.contains("options.aws_secret_access_key") && p.contains("is a secret")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|p| p.contains("secret_env.aws_access_key_id")
                && p.contains("not an environment variable name")),
        "{all:?}"
    );
    assert!(
        !all.iter().any(|p| p.contains("hunter2")),
        "the value never appears: {all:?}"
    );
    let text = with_upload("keep_local = \"1h\"");
    assert_problem(&text, 14, "sink.parquet.upload.to", "missing");
    let text = with_upload("to = \"file:///mnt/nas\"\noptions = { aws_region = \"x\" }");
    assert_problem(
        &text,
        16,
        "sink.parquet.upload.options.aws_region",
        "takes no settings",
    );
}

#[test]
fn plain_http_to_a_store_is_an_opt_in_that_check_warns_about() {
    let (_, warnings) = upload_of(
        "to = \"s3://b/p\"\noptions = { aws_endpoint = \"http://127.0.0.1:9000\", aws_allow_http = \"true\" }",
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("line.toml:16: sink.parquet.upload.options.aws_")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("plain HTTP")),
        "{warnings:?}"
    );
}

/// MINIMAL with `[hub]` (`hub`, from line 15) and `[sink.parquet.upload]` after it.
fn with_hub_upload(hub: &str, upload: &str) -> String {
    format!("{MINIMAL}\n[hub]\n{hub}\n\n[sink.parquet.upload]\n{upload}\n")
}

#[test]
fn iot_hub_file_upload_takes_the_hub_identity_and_no_store_settings() {
    let hub = "connection_string_env = \"CS\"\nca_file = \"certs/digicert-g2.pem\"";
    let text = with_hub_upload(hub, "via = \"iothub\"\nkeep_local = \"0s\"");
    let c = parse(Path::new(FILE), &text).unwrap_or_else(|e| panic!("{e}"));
    let u = c.parquet.unwrap().upload.unwrap();
    assert_eq!(u.to, UploadTarget::IotHub);
    assert_eq!(u.keep_local, Some(Duration::ZERO));
    // A hub double's HTTPS API on loopback: allowed, warned, TLS still needs the CA.
    let test_hub = "connection_string_env = \"CS\"\ninsecure_endpoint = \"127.0.0.1:1883\"\n\
                    https_endpoint = \"127.0.0.1:8443\"\nca_file = \"ca.pem\"";
    let c = parse(
        Path::new(FILE),
        &with_hub_upload(test_hub, "via = \"iothub\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let h = c.hub.unwrap();
    assert_eq!(h.https_endpoint.as_deref(), Some("127.0.0.1:8443"));
    assert_eq!(h.ca_file, Some(CaRoots::File("ca.pem".into())));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.to_string().contains("line.toml:17: hub.https_endpoint")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn iot_hub_file_upload_refusals_name_the_key() {
    let hub = "connection_string_env = \"CS\"\nca_file = \"ca.pem\"";
    // Not both, and no store settings: line 19 is the upload's first key.
    let text = with_hub_upload(hub, "via = \"iothub\"\nto = \"az://c/p\"");
    assert_problem(&text, 20, "sink.parquet.upload.to", "not both");
    let text = with_hub_upload(
        hub,
        "via = \"iothub\"\noptions = { azure_storage_account_name = \"a\" }",
    );
    assert_problem(
        &text,
        20,
        "sink.parquet.upload.options.azure_storage_account_name",
        "no store settings",
    );
    let text = with_hub_upload(hub, "via = \"iotedge\"");
    assert_problem(&text, 19, "sink.parquet.upload.via", "\"iothub\"");
    // Without [hub].
    assert_problem(
        &with_upload("via = \"iothub\""),
        15,
        "sink.parquet.upload.via",
        "needs a [hub]",
    );
    // A module identity cannot upload files.
    let module = "x509 = { host = \"h.azure-devices.net\", device_id = \"d\", module_id = \"m\", cert_file = \"c.pem\", key_file = \"c.key\" }\nca_file = \"ca.pem\"";
    assert_problem(
        &with_hub_upload(module, "via = \"iothub\""),
        15,
        "hub.x509.module_id",
        "not modules",
    );
    // Plain MQTT to a test hub and no CA: the HTTPS API could not be checked.
    let plain = "connection_string_env = \"CS\"\ninsecure_endpoint = \"127.0.0.1:1883\"";
    assert_problem(
        &with_hub_upload(plain, "via = \"iothub\""),
        19,
        "sink.parquet.upload.via",
        "needs ca_file",
    );
    // https_endpoint is for loopback only.
    let remote =
        "connection_string_env = \"CS\"\nhttps_endpoint = \"10.0.0.5:443\"\nca_file = \"ca.pem\"";
    assert_problem(
        &with_hub_upload(remote, "via = \"iothub\""),
        16,
        "hub.https_endpoint",
        "not a loopback address",
    );
}
