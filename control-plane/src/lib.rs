//! Sidecar control plane: the source of truth for backends, pools, settings and
//! statistics. Serves `AdminService` (operators, console, automation) and `NodeService`
//! (data-plane proxies) over gRPC and gRPC-web, stores everything in sled, and keeps
//! provider API keys encrypted at rest.

#![forbid(unsafe_code)]

// The wire edge: where requests come in.
pub mod api;

// The domain: what the control plane knows and decides.
pub mod auth;
pub mod budgets;
pub mod cluster;
pub mod crypto;
pub mod dashboard;
pub mod fleet;
pub mod health;
pub mod key_metrics;
pub mod maintenance;
pub mod nodes;
pub mod ops;
pub mod probe;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod status;
pub mod store;
pub mod transfer;
pub mod validate;

// The process: configuration, start-up, listeners, metrics.
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod server;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
pub mod util;

pub use config::{ConfigError, ControlConfig, Flags, LogFormat};
pub use server::{ControlPlane, InitError, ServeError};
