//! The settings mechanism of `sidecar-control` and `sidecar-proxy`, a crate of its own so
//! that both binaries load their configuration the same way: each setting is declared once
//! with [`settings!`] (env var, flag or none, file key, doc, default), which derives the
//! binary's clap `Flags`, its [`Setting`] table and the flag lookup; [`Layered`] reads the
//! `--config` TOML file and resolves a setting by precedence: flag, env var, file, default.
//! Parsing a value into its type stays with each binary.

use std::{collections::BTreeMap, path::Path};

/// An invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {message}")]
pub struct ConfigError {
    /// The setting's names: env var, and flag if it has one (`SIDECAR_X (--x)`).
    pub setting: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// One declared setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Environment variable, e.g. `SIDECAR_DATA_DIR`.
    pub env: &'static str,
    /// Key in the `--config` file, e.g. `data_dir`.
    pub file: &'static str,
    /// Whether it has a flag: the file key in kebab case. Secrets have none.
    pub has_flag: bool,
    /// What it is (`--help` shows it).
    pub doc: &'static str,
    /// The value when nothing sets it.
    pub default: Option<&'static str>,
}

impl Setting {
    /// The flag, e.g. `--data-dir`, as clap derives it from the field name.
    pub fn flag(&self) -> Option<String> {
        self.has_flag.then(|| format!("--{}", self.file.replace('_', "-")))
    }

    /// How errors name it: `SIDECAR_DATA_DIR (--data-dir)`, or the env var alone.
    pub fn name(&self) -> String {
        match self.flag() {
            Some(flag) => format!("{} ({flag})", self.env),
            None => self.env.to_owned(),
        }
    }
}

/// A binary's flags, as [`settings!`] derives them.
pub trait Declared {
    /// Every setting, with a flag or not, in declaration order.
    const SETTINGS: &'static [Setting];
    /// The `--config` file, if given.
    fn config_file(&self) -> Option<&Path>;
    /// The flag value of the setting with this env var; `None` if not given or no flag.
    fn lookup(&self, env: &str) -> Option<&String>;
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// An environment variable (empty counts as unset).
    Env,
    /// The `--config` file.
    File,
    /// The declared default.
    Default,
}

/// A binary's settings from its flags, an environment lookup, the `--config` file and the
/// declared defaults, in that order of precedence.
pub struct Layered<'a, F> {
    flags: &'a F,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
}

impl<'a, F: Declared> Layered<'a, F> {
    /// Reads the `--config` file (if any): unknown keys are refused; arrays become their
    /// items joined with commas, other non-strings their TOML text (`7`, `true`).
    pub fn new(flags: &'a F, env: &'a dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match flags.config_file() {
            Some(path) => read_file(path, F::SETTINGS)?,
            None => BTreeMap::new(),
        };
        Ok(Self { flags, env, file })
    }

    /// A setting's value and where it came from; `None` if nothing sets it and it has no
    /// default.
    pub fn get(&self, env: &str) -> Option<(String, Origin)> {
        let s = setting::<F>(env);
        if let Some(v) = self.flags.lookup(env) {
            return Some((v.clone(), Origin::Flag));
        }
        if let Some(v) = (self.env)(env).filter(|v| !v.is_empty()) {
            return Some((v, Origin::Env));
        }
        if let Some(v) = self.file.get(s.file) {
            return Some((v.clone(), Origin::File));
        }
        s.default.map(|d| (d.to_owned(), Origin::Default))
    }

    /// A setting's value, wherever it came from.
    pub fn value(&self, env: &str) -> Option<String> {
        self.get(env).map(|(v, _)| v)
    }

    /// The value of a setting with a default (or else one that must be set).
    pub fn text(&self, env: &str) -> Result<String, ConfigError> {
        self.value(env).ok_or_else(|| self.invalid(env, "missing"))
    }

    /// A setting with a default (or else one that must be set), trimmed and parsed;
    /// `expected` says what `parse` accepts.
    pub fn parse<T>(&self, env: &str, expected: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, ConfigError> {
        self.parse_opt(env, expected, parse)?.ok_or_else(|| self.invalid(env, format!("missing: expected {expected}")))
    }

    /// An optional setting, trimmed and parsed if set.
    pub fn parse_opt<T>(
        &self,
        env: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.value(env) {
            None => Ok(None),
            Some(raw) => parse(raw.trim())
                .map(Some)
                .ok_or_else(|| self.invalid(env, format!("expected {expected}, got {raw:?}"))),
        }
    }

    /// An error naming the setting (env var and flag).
    pub fn invalid(&self, env: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { setting: setting::<F>(env).name(), message: message.into() }
    }
}

fn setting<F: Declared>(env: &str) -> &'static Setting {
    F::SETTINGS.iter().find(|s| s.env == env).unwrap_or_else(|| panic!("{env} is not a declared setting"))
}

/// Reads the TOML file into setting values as text, refusing unknown keys.
fn read_file(path: &Path, settings: &[Setting]) -> Result<BTreeMap<String, String>, ConfigError> {
    let err = |message: String| ConfigError { setting: format!("config file {}", path.display()), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.message().to_owned()))?;
    let scalar = |v: toml::Value| match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    };
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !settings.iter().any(|s| s.file == key) {
            let known: Vec<_> = settings.iter().map(|s| s.file).collect();
            return Err(err(format!("unknown key `{key}` (known: {})", known.join(", "))));
        }
        let text = match value {
            toml::Value::Array(items) => items.into_iter().map(scalar).collect::<Vec<_>>().join(","),
            other => scalar(other),
        };
        out.insert(key, text);
    }
    Ok(out)
}

/// Declares a binary's settings, one line each, and derives from them its clap `Flags`
/// (a `--config <FILE>` flag, then one `Option<String>` field per setting with a flag, its
/// help ending in `[env: …] [default: …]`) and the [`Declared`] table and lookup:
///
/// ```
/// sidecar_settings::settings! {
///     /// Flags of `sidecar-x`.
///     pub struct Flags {
///         /// TOML file with any of the settings (keys in snake_case).
///         config
///     }
///     api_key = "SIDECAR_API_KEY": "Key for the upstream";  // no flag: a secret
///     data_dir = "SIDECAR_DATA_DIR", flag "DIR": "Data directory", default "./data";
///     workers = "SIDECAR_WORKERS", flag "N": "Worker threads", computed "one per CPU";
/// }
/// let flags = Flags { data_dir: Some("/srv".into()), ..Default::default() };
/// let src = sidecar_settings::Layered::new(&flags, &|_| None).unwrap();
/// assert_eq!(src.value("SIDECAR_DATA_DIR").as_deref(), Some("/srv"));
/// assert_eq!(src.invalid("SIDECAR_API_KEY", "bad").to_string(), "invalid SIDECAR_API_KEY: bad");
/// ```
///
/// The name before `=` is the file key and the flag's field (flag `--data-dir`); `flag`
/// gives the flag's value name. `default` is the value when nothing sets the setting;
/// `computed` only describes, for `--help`, a default the binary computes.
#[macro_export]
macro_rules! settings {
    (@opt) => { None };
    (@opt $value:literal) => { Some($value) };
    (@has_flag) => { false };
    (@has_flag $value_name:literal) => { true };
    (@help $env:literal $doc:literal $($default:literal)?) => {
        concat!($doc, " [env: ", $env, "]" $(, " [default: ", $default, "]")?)
    };
    (@munch $head:tt [$($fields:tt)*] [$($flagged:tt)*]
        $key:ident = $env:literal, flag $value_name:literal : $doc:literal
            $(, default $default:literal)? $(, computed $computed:literal)?;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch $head
            [$($fields)*
                #[doc = $crate::settings!(@help $env $doc $($default)? $($computed)?)]
                #[arg(long, value_name = $value_name, help = $crate::settings!(@help $env $doc $($default)? $($computed)?))]
                pub $key: Option<String>,
            ]
            [$($flagged)* $env $key]
            $($rest)*
        );
    };
    (@munch $head:tt $fields:tt $flagged:tt
        $key:ident = $env:literal : $doc:literal $(, default $default:literal)? $(, computed $computed:literal)?;
        $($rest:tt)*
    ) => {
        $crate::settings!(@munch $head $fields $flagged $($rest)*);
    };
    (@munch [$(#[$meta:meta])* $flags:ident [$(#[$config_meta:meta])*] [$($table:tt)*]]
        [$($fields:tt)*] [$($env:literal $key:ident)*]
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct $flags {
            $(#[$config_meta])*
            #[arg(long, value_name = "FILE")]
            pub config: Option<std::path::PathBuf>,
            $($fields)*
        }

        impl $crate::Declared for $flags {
            const SETTINGS: &'static [$crate::Setting] = &[$($table)*];

            fn config_file(&self) -> Option<&std::path::Path> {
                self.config.as_deref()
            }

            fn lookup(&self, env: &str) -> Option<&String> {
                match env {
                    $($env => self.$key.as_ref(),)*
                    _ => None,
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $flags:ident { $(#[$config_meta:meta])* config }
        $($key:ident = $env:literal $(, flag $value_name:literal)? : $doc:literal
            $(, default $default:literal)? $(, computed $computed:literal)?;)*
    ) => {
        $crate::settings!(@munch
            [$(#[$meta])* $flags [$(#[$config_meta])*] [$(
                $crate::Setting {
                    env: $env,
                    file: stringify!($key),
                    has_flag: $crate::settings!(@has_flag $($value_name)?),
                    doc: $doc,
                    default: $crate::settings!(@opt $($default)?),
                },
            )*]]
            [] []
            $($key = $env $(, flag $value_name)? : $doc $(, default $default)? $(, computed $computed)?;)*
        );
    };
}

#[cfg(test)]
mod tests;
