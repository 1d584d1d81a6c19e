//! Plugins as clients see them: the name rule, the limits a plugin sets for
//! its tasks, and what is shown of a loaded version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A plugin name that breaks the rule `[a-z0-9][a-z0-9_-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid plugin name {0:?}: use 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
)]
pub struct InvalidName(pub String);

/// Checks a plugin name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(InvalidName(name.to_owned()))
    }
}

/// Limits a plugin may set for its own tasks in an optional sidecar file
/// `<name>.limits.json` beside `<name>.wasm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Default timeout of this plugin's tasks, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory cap of this plugin's tasks, in MiB.
    pub memory_mb: Option<usize>,
    /// How many tasks one instance may run, one after another (unset or 1:
    /// a fresh instance for every task). State left in the instance by one
    /// task is seen by the next: only for plugins written for it.
    pub reuse_tasks: Option<u32>,
}

/// What the API and `/stats` show of a loaded plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Hex SHA-256 of the component file.
    pub digest: String,
    /// Size of the component file in bytes.
    pub size: usize,
    /// When this version was loaded.
    pub loaded_at: DateTime<Utc>,
    /// Milliseconds this host took to make it runnable: checks, compile (or
    /// load from the compile cache) and linking.
    #[serde(default)]
    pub load_ms: u64,
    /// The version of the `taskflow:plugin` contract it was built for
    /// (empty from a host older than contract 0.2.0).
    #[serde(default)]
    pub contract: String,
    /// Limits from its sidecar file, `<name>.limits.json` (unset: the host's defaults).
    pub limits: PluginLimits,
}

/// `GET /plugins`: the loaded plugins.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginList {
    /// One entry per plugin, by name.
    pub plugins: Vec<PluginInfo>,
}

/// A host's plugin registry counters, in `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryStats {
    /// Plugins currently loaded.
    pub loaded: usize,
    /// Components compiled since start.
    pub compiled: u64,
    /// Of those, components compiled in a child process.
    pub compiled_in_child: u64,
    /// Components loaded from the compile cache since start.
    pub cache_hits: u64,
    /// Versions rejected since start.
    pub rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn plugin_names_follow_the_documented_pattern() {
        for good in ["echo", "a", "word-count_2", "0abc", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "",
            "Echo",
            "-echo",
            "_x",
            "a/b",
            "../etc",
            "a.b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad} should be invalid");
        }
    }
}
