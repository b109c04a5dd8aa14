//! The MQTT codec: framing, decoding at every protocol level, re-encoding.
//! The checks are `gateway::fuzzing::codec`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::codec(data));
