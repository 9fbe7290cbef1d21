//! `settings set KEY=VALUE` parsing and the settings' `key: value` view. The keys are
//! the field names of `SettingsPatch`, so one list serves the parser, its error message
//! and the printed settings.

use sidecar_proto::v1 as pb;

/// The type of a setting's value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Fraction,
    Bool,
}

/// Every settable key, in the proto's field order.
const KEYS: &[(&str, Kind)] = &[
    ("cooldown_base_seconds", Kind::Int),
    ("cooldown_max_seconds", Kind::Int),
    ("queue_capacity", Kind::Int),
    ("queue_timeout_seconds", Kind::Int),
    ("low_priority_timeout_seconds", Kind::Int),
    ("emergency_fraction", Kind::Fraction),
    ("near_recovery_wait_seconds", Kind::Int),
    ("failure_threshold", Kind::Int),
    ("error_cooldown_seconds", Kind::Int),
    ("bucket_burst", Kind::Int),
    ("adaptive_retreat", Kind::Bool),
    ("retention_minute_hours", Kind::Int),
    ("retention_hour_days", Kind::Int),
    ("retention_day_days", Kind::Int),
    ("backup_interval_hours", Kind::Int),
    ("backup_retention_days", Kind::Int),
    ("probe_interval_seconds", Kind::Int),
    ("probe_timeout_seconds", Kind::Int),
];

/// One parsed `KEY=VALUE` argument.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SettingArg {
    key: &'static str,
    value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Fraction(f64),
    Bool(bool),
}

/// Parses `KEY=VALUE`; an unknown key's error lists the known ones. Ranges are left to
/// the server, which names the field and the allowed range.
pub(crate) fn parse_setting(arg: &str) -> Result<SettingArg, String> {
    let (key, raw) = arg.split_once('=').ok_or_else(|| format!("expected KEY=VALUE; known keys: {}", known_keys()))?;
    let key = key.trim();
    let raw = raw.trim();
    let (key, kind) = KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .copied()
        .ok_or_else(|| format!("unknown setting {key:?}; known keys: {}", known_keys()))?;
    let value = match kind {
        Kind::Int => Value::Int(raw.parse().map_err(|_| format!("{key} takes a whole number, got {raw:?}"))?),
        Kind::Fraction => {
            Value::Fraction(raw.parse().map_err(|_| format!("{key} takes a number such as 0.1, got {raw:?}"))?)
        }
        Kind::Bool => Value::Bool(match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => return Err(format!("{key} takes true or false, got {raw:?}")),
        }),
    };
    Ok(SettingArg { key, value })
}

fn known_keys() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// A patch setting exactly the given keys (a later pair for the same key wins).
pub(crate) fn patch(pairs: &[SettingArg]) -> pb::SettingsPatch {
    let mut p = pb::SettingsPatch::default();
    for pair in pairs {
        match (pair.key, pair.value) {
            ("cooldown_base_seconds", Value::Int(v)) => p.cooldown_base_seconds = Some(v),
            ("cooldown_max_seconds", Value::Int(v)) => p.cooldown_max_seconds = Some(v),
            ("queue_capacity", Value::Int(v)) => p.queue_capacity = Some(v),
            ("queue_timeout_seconds", Value::Int(v)) => p.queue_timeout_seconds = Some(v),
            ("low_priority_timeout_seconds", Value::Int(v)) => p.low_priority_timeout_seconds = Some(v),
            ("emergency_fraction", Value::Fraction(v)) => p.emergency_fraction = Some(v),
            ("near_recovery_wait_seconds", Value::Int(v)) => p.near_recovery_wait_seconds = Some(v),
            ("failure_threshold", Value::Int(v)) => p.failure_threshold = Some(v),
            ("error_cooldown_seconds", Value::Int(v)) => p.error_cooldown_seconds = Some(v),
            ("bucket_burst", Value::Int(v)) => p.bucket_burst = Some(v),
            ("adaptive_retreat", Value::Bool(v)) => p.adaptive_retreat = Some(v),
            ("retention_minute_hours", Value::Int(v)) => p.retention_minute_hours = Some(v),
            ("retention_hour_days", Value::Int(v)) => p.retention_hour_days = Some(v),
            ("retention_day_days", Value::Int(v)) => p.retention_day_days = Some(v),
            ("backup_interval_hours", Value::Int(v)) => p.backup_interval_hours = Some(v),
            ("backup_retention_days", Value::Int(v)) => p.backup_retention_days = Some(v),
            ("probe_interval_seconds", Value::Int(v)) => p.probe_interval_seconds = Some(v),
            ("probe_timeout_seconds", Value::Int(v)) => p.probe_timeout_seconds = Some(v),
            (key, value) => unreachable!("parse_setting gave {key} a {value:?}"),
        }
    }
    p
}

/// The settings as `(key, value)` rows, keyed like `settings set`.
pub(crate) fn fields(s: &pb::Settings) -> Vec<(&'static str, String)> {
    vec![
        ("cooldown_base_seconds", s.cooldown_base_seconds.to_string()),
        ("cooldown_max_seconds", s.cooldown_max_seconds.to_string()),
        ("queue_capacity", s.queue_capacity.to_string()),
        ("queue_timeout_seconds", s.queue_timeout_seconds.to_string()),
        ("low_priority_timeout_seconds", s.low_priority_timeout_seconds.to_string()),
        ("emergency_fraction", s.emergency_fraction.to_string()),
        ("near_recovery_wait_seconds", s.near_recovery_wait_seconds.to_string()),
        ("failure_threshold", s.failure_threshold.to_string()),
        ("error_cooldown_seconds", s.error_cooldown_seconds.to_string()),
        ("bucket_burst", s.bucket_burst.to_string()),
        ("adaptive_retreat", s.adaptive_retreat.to_string()),
        ("retention_minute_hours", s.retention_minute_hours.to_string()),
        ("retention_hour_days", s.retention_hour_days.to_string()),
        ("retention_day_days", s.retention_day_days.to_string()),
        ("backup_interval_hours", s.backup_interval_hours.to_string()),
        ("backup_retention_days", s.backup_retention_days.to_string()),
        ("probe_interval_seconds", s.probe_interval_seconds.to_string()),
        ("probe_timeout_seconds", s.probe_timeout_seconds.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_a_patch_of_only_those_fields() {
        let pairs: Vec<_> = ["cooldown_base_seconds=20", "adaptive_retreat=true", "emergency_fraction=0.2"]
            .iter()
            .map(|a| parse_setting(a).unwrap())
            .collect();
        let p = patch(&pairs);
        assert_eq!(p.cooldown_base_seconds, Some(20));
        assert_eq!(p.adaptive_retreat, Some(true));
        assert_eq!(p.emergency_fraction, Some(0.2));
        assert_eq!(p.queue_capacity, None);
    }

    #[test]
    fn unknown_key_error_lists_the_known_keys() {
        let e = parse_setting("cooldown=5").unwrap_err();
        assert!(e.contains("unknown setting \"cooldown\""), "{e}");
        assert!(e.contains("cooldown_base_seconds") && e.contains("adaptive_retreat"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_expected_type() {
        assert!(parse_setting("queue_capacity=lots").unwrap_err().contains("whole number"));
        assert!(parse_setting("adaptive_retreat=maybe").unwrap_err().contains("true or false"));
        assert!(parse_setting("queue_capacity").unwrap_err().contains("KEY=VALUE"));
        // Negative numbers go to the server, which explains the allowed range.
        assert_eq!(parse_setting("queue_capacity=-1").unwrap().value, Value::Int(-1));
    }

    #[test]
    fn every_key_maps_to_a_patch_field_and_a_printed_row() {
        let printed: Vec<_> = fields(&pb::Settings::default()).into_iter().map(|(k, _)| k).collect();
        let keys: Vec<_> = KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(printed, keys);
        for (key, kind) in KEYS {
            let raw = match kind {
                Kind::Int => "1",
                Kind::Fraction => "0.5",
                Kind::Bool => "true",
            };
            let p = patch(&[parse_setting(&format!("{key}={raw}")).unwrap()]);
            assert_ne!(p, pb::SettingsPatch::default(), "{key}");
        }
    }
}
