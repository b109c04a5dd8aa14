//! The store's records, journal entries and message keys: exact round trips.
//! The checks are `gateway::fuzzing::store_record`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::store_record(data));
