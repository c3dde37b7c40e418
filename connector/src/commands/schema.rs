//! `opcua-connector schema`: prints the JSON Schema of the config file (the text of
//! `configs/opcua-connector.schema.json`), for editors and packages.

use std::io::Write as _;

use super::{Failure, Outcome};
use crate::config::schema::config_schema;

pub fn schema() -> Outcome {
    let mut out = std::io::stdout().lock();
    out.write_all(config_schema().as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Runtime(format!("cannot write the schema: {e}")))
}
