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

#[test]
fn a_store_with_settings_and_secrets_by_reference() {
    let (u, warnings) = upload_of(
        "to = \"s3://plant-data/edge/line-a\"\nkeep_local = \"24h\"\n\
         options = { aws_region = \"eu-central-1\" }\n\
         secret_env = { aws_access_key_id = \"S3_ID\" }\n\
         secret_file = { aws_secret_access_key = \"/etc/opcua-connector/s3.secret\" }",
    );
    assert_eq!(u.to, "s3://plant-data/edge/line-a");
    assert_eq!(u.keep_local, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(
        u.options,
        vec![("aws_region".into(), "eu-central-1".into())]
    );
    assert_eq!(
        u.secrets,
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
        assert_eq!(u.to, to);
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
