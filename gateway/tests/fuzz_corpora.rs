//! Replays every committed fuzz input on stable Rust: the minimized corpus of each cargo-fuzz
//! target (fuzz/corpus/TARGET/) and the inputs that once broke one (fuzz/regressions/TARGET/),
//! through the same checks the fuzz targets run (`gateway::fuzzing`). A change that breaks a
//! property one of these inputs exercises fails here, without nightly or a fuzzing run.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_keeps_its_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failures = Vec::new();
    for &(target, check) in gateway::fuzzing::TARGETS {
        let corpus = inputs(&root.join("corpus").join(target));
        // An empty or misnamed corpus would make this test pass while checking nothing.
        assert!(
            !corpus.is_empty(),
            "no corpus for fuzz target {target} in {}",
            root.display()
        );
        let regressions = inputs(&root.join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = fs::read(file).expect("a readable corpus file");
            if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target}: {}: {why}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
