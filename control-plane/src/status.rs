//! A backend's health (from probes and passive checks) and the runtime status derived
//! from it, its config and the fleet's cooldown.

/// Active-probe and passive health of a backend, as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Health {
    /// Answering.
    Healthy,
    /// Failing probes or requests.
    Error,
}

impl Health {
    /// The snapshot's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Error => "error",
        }
    }
}

/// A backend's runtime status, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// Disabled by config.
    Disabled,
    /// Failing health.
    Error,
    /// Cooling down fleet-wide.
    Cooling,
    /// None of the above.
    Healthy,
}

impl BackendStatus {
    /// Disabled by config, failing health, cooling fleet-wide, or healthy.
    pub fn of(enabled: bool, health: Health, cooling_until_ms: i64, now_ms: i64) -> Self {
        if !enabled {
            Self::Disabled
        } else if health == Health::Error {
            Self::Error
        } else if cooling_until_ms > now_ms {
            Self::Cooling
        } else {
            Self::Healthy
        }
    }
}
