//! Unit tests of the configuration, one file per part: the defaults (`settings`), the loader
//! (`load`), value parsing (`values`) and the rules (`validate`).

use super::Config;

mod cluster;
mod ingest;
mod load;
mod settings;
mod validate;
mod values;

fn error(text: &str) -> String {
    match Config::from_toml(text) {
        Ok(config) => panic!("accepted {text:?} as {config:?}"),
        Err(e) => e.to_string(),
    }
}
