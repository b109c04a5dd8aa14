//! Topic validation and matching, the subscription index and the retained store against models.
//! The checks are `gateway::fuzzing::topic`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::topic(data));
