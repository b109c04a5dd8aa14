//! The session state machine: client packet sequences against the broker's real connection
//! and session tasks over in-memory streams, with paused time.
//! The checks are `gateway::fuzzing::session`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::session(data));
