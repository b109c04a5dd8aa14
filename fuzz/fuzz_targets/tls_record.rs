//! The TLS record layer after the handshake, on records sealed from a script the input describes
//! (some corrupted), read whole and cut into arbitrary reads. The checks are
//! `gateway::fuzzing::tls_record`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::tls_record(data));
