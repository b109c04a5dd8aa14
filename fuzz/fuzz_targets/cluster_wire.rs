//! What other cluster nodes send a node over NATS: forwarded messages' envelopes and control
//! messages. The checks are `gateway::fuzzing::cluster_wire`'s, which the corpus replay test
//! runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::cluster_wire(data));
