//! The password file and the ACL file: parsing, and errors at the first bad line.
//! The checks are `gateway::fuzzing::auth_files`'s, which the corpus replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::auth_files(data));
