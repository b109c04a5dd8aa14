//! Test-only fault injection (feature `fault-injection`): failures a test cannot cause from
//! outside the process. A PUBLISH to `$fault/panic` panics its session's task (`client`); this
//! file holds the process-wide switches.

use std::sync::atomic::{AtomicBool, Ordering};

static STORE_WRITES_FAIL: AtomicBool = AtomicBool::new(false);

/// Makes every store commit fail as on a full disk (ENOSPC) until switched off again.
pub fn set_store_writes_fail(fail: bool) {
    STORE_WRITES_FAIL.store(fail, Ordering::Relaxed);
}

pub(crate) fn store_writes_fail() -> bool {
    STORE_WRITES_FAIL.load(Ordering::Relaxed)
}
