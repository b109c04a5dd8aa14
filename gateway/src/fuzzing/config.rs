//! The configuration file: TOML text into a validated `Config`.

use crate::config::Config;

/// Checks, for arbitrary text: loading never panics; what loads is valid (`validate` agrees,
/// and loading the same text again gives the same `Config`); what does not load is refused with
/// a one-line, non-empty message (errors are logged and printed as one line each).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                panic!("loaded a configuration that does not validate: {e}");
            }
            assert_eq!(Config::from_toml(text).ok(), Some(config), "loading again");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty(), "an empty error message");
            assert!(
                !message.contains('\n'),
                "an error message of several lines: {message:?}"
            );
        }
    }
}
