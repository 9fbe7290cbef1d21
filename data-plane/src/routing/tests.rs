//! Routing tests live in routing/tests.rs.
