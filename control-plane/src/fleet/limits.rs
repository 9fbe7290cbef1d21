//! The limits a backend's models have of their own, per their window, as the allocator
//! splits them.

use crate::{
    snapshot::ConfigState,
    store::{BackendRecord, per_window},
};

/// A model's own limits on a backend.
pub(super) struct ModelLimits {
    pub(super) name: String,
    /// Requests per the model's window (the backend's limit when the model limits only
    /// tokens).
    pub(super) requests: u32,
    /// Tokens per the model's window.
    pub(super) tokens: Option<u32>,
    /// The model's window, in seconds of a minute.
    pub(super) window_seconds: u32,
}

/// The own limits of a backend's models that have them.
pub(super) fn model_limits(config: &ConfigState, b: &BackendRecord) -> Vec<ModelLimits> {
    let backend = config.rpm_limit(b);
    b.model_mappings
        .iter()
        .filter(|(_, m)| m.has_limits())
        .map(|(name, m)| {
            let window_seconds = m.window_seconds(b.window_seconds);
            ModelLimits {
                name: name.clone(),
                requests: per_window(m.rpm_limit.unwrap_or(backend).min(backend), window_seconds),
                tokens: m.tpm_limit.map(|t| per_window(t, window_seconds)),
                window_seconds,
            }
        })
        .collect()
}
