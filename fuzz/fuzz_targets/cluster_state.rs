//! What cluster nodes and the session state stream hand a node: hand-overs, snapshots, a
//! subject's records and batches folded back. The checks are
//! `gateway::fuzzing::cluster_state`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::cluster_state(data));
