//! `opcua-connector schema`: prints the JSON Schema of the config file (the text of
//! `configs/opcua-connector.schema.json`), for editors and packages.

use std::io::{ErrorKind, Write as _};

use super::{Failure, Outcome};
use crate::config::schema::config_schema;

pub fn schema() -> Outcome {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(config_schema().as_bytes())
        .and_then(|()| out.flush())
    {
        // A reader that stopped early (`| head`) has what it wanted.
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(Failure::Runtime(format!("cannot write the schema: {e}")))
        }
        _ => Ok(()),
    }
}
