//! The configuration file: TOML text into a validated Config.
//! The checks are `gateway::fuzzing::config`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::config(data));
