//! The store suite on sled.

use super::*;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.initialize(&Settings::default()).unwrap();
    (dir, store)
}

// The one suite, compiled once per store.
#[allow(clippy::duplicate_mod)]
#[path = "suite.rs"]
mod suite;
