//! The WebSocket frame decoder against a naive one, on arbitrary bytes cut into arbitrary reads.
//! The checks are `gateway::fuzzing::ws_frame`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::ws_frame(data));
