//! The store suite on PostgreSQL: a fresh database per test on the test server
//! (`crate::testing`).

use super::*;

fn open() -> ((), Store) {
    let store = Store::with(PgStore::connect(&crate::testing::database()).unwrap());
    store.initialize(&Settings::default()).unwrap();
    ((), store)
}

// The one suite, compiled once per store.
#[allow(clippy::duplicate_mod)]
#[path = "suite.rs"]
mod suite;
