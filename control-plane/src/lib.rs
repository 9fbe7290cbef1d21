//! Sidecar control plane: the source of truth for backends, pools, settings and
//! statistics. Serves `AdminService` (operators, console, automation) and `NodeService`
//! (data-plane proxies) over gRPC and gRPC-web, stores everything in sled, and keeps
//! provider API keys encrypted at rest.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod console;
pub mod crypto;
pub mod dashboard;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod maintenance;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod reflection;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod util;
pub mod validate;

pub use config::{ConfigError, ControlConfig, Flags, LogFormat};
pub use server::{ControlPlane, InitError, ServeError};
