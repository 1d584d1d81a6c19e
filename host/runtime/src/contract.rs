//! The plugin contract's version: which version of the `taskflow:plugin`
//! WIT package a component was built against, and whether this host serves
//! it.
//!
//! The rule, as semantic versioning has it: within 0.x every minor version
//! is its own contract (a plugin built for 0.1.* runs on a host serving
//! 0.1.*, and only there); from 1.0 on, a plugin built for 1.m runs on a
//! host serving 1.n for any n ≥ m (additions only within a major version).
//!
//! A host serves two versions: the current one (`wit/processor.wit`, what
//! new plugins are built against) and the one before it (`wit/0.1/`, kept
//! unchanged), so plugins built before a contract change keep running while
//! their authors rebuild them.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The current WIT package, `wit/processor.wit`.
pub const WIT_SOURCE: &str = include_str!("../../../wit/processor.wit");

/// The previous minor version of the package, `wit/0.1/processor.wit`,
/// which this host still serves.
pub const PREVIOUS_WIT_SOURCE: &str = include_str!("../../../wit/0.1/processor.wit");

/// The package's name.
pub const PACKAGE: &str = "taskflow:plugin";

/// A version of the contract this host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// The current version: [`WIT_SOURCE`].
    Current,
    /// The previous minor version: [`PREVIOUS_WIT_SOURCE`].
    Previous,
}

impl Contract {
    /// The version of the package, e.g. `0.2.0`.
    pub fn version(self) -> &'static str {
        package_version(match self {
            Contract::Current => WIT_SOURCE,
            Contract::Previous => PREVIOUS_WIT_SOURCE,
        })
    }
}

/// The version of the package new plugins are built against, e.g. `0.2.0`.
pub fn version() -> &'static str {
    Contract::Current.version()
}

/// The versions this host serves, current first, e.g. `0.2.0 and 0.1.0`.
pub fn served() -> String {
    format!(
        "{} and {}",
        Contract::Current.version(),
        Contract::Previous.version()
    )
}

/// Which served contract runs a plugin built for version `plugin`, if any.
pub fn serving(plugin: &str) -> Option<Contract> {
    [Contract::Current, Contract::Previous]
        .into_iter()
        .find(|contract| compatible(plugin, contract.version()))
}

fn package_version(source: &'static str) -> &'static str {
    source
        .split("package taskflow:plugin@")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(str::trim)
        .unwrap_or("0.0.0")
}

/// Whether a plugin built for version `plugin` of the package runs on a
/// host serving version `host` (see the module's rule).
pub fn compatible(plugin: &str, host: &str) -> bool {
    match (parse(plugin), parse(host)) {
        (Some((0, plugin_minor, _)), Some((0, host_minor, _))) => plugin_minor == host_minor,
        (Some((plugin_major, plugin_minor, _)), Some((host_major, host_minor, _))) => {
            plugin_major == host_major && plugin_major > 0 && plugin_minor <= host_minor
        }
        _ => false,
    }
}

/// The version of the package that the component's imports name (its
/// `types` and `host` interfaces), if it imports any of them.
pub fn built_for(component: &Component, engine: &Engine) -> Option<String> {
    let prefix = format!("{PACKAGE}/");
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let versioned = name.strip_prefix(prefix.as_str())?;
            versioned
                .split_once('@')
                .map(|(_, version)| version.to_owned())
        })
}

/// `major.minor.patch`, ignoring pre-release and build suffixes.
fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|part| part.parse::<u64>().ok());
    let parsed = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_serves_its_wit_package_and_the_previous_minor_version() {
        assert_eq!(version(), "0.2.0");
        assert_eq!(Contract::Previous.version(), "0.1.0");
        assert_eq!(served(), "0.2.0 and 0.1.0");
        assert_eq!(serving("0.2.0"), Some(Contract::Current));
        assert_eq!(serving("0.2.5"), Some(Contract::Current));
        assert_eq!(serving("0.1.0"), Some(Contract::Previous));
        assert_eq!(serving("0.1.2"), Some(Contract::Previous));
        assert_eq!(serving("0.3.0"), None);
        assert_eq!(serving("0.0.9"), None);
        assert_eq!(serving("1.0.0"), None);
    }

    #[test]
    fn compatibility_follows_semantic_versioning() {
        for (plugin, host) in [
            ("0.1.0", "0.1.0"),
            ("0.1.3", "0.1.0"),
            ("0.1.0", "0.1.7"),
            ("1.2.0", "1.2.0"),
            ("1.0.0", "1.3.1"),
        ] {
            assert!(compatible(plugin, host), "{plugin} on {host}");
        }
        for (plugin, host) in [
            ("0.2.0", "0.1.0"),
            ("0.1.0", "0.2.0"),
            ("1.3.0", "1.2.0"),
            ("2.0.0", "1.9.0"),
            ("1.0.0", "2.0.0"),
            ("x", "0.1.0"),
            ("0.1", "0.1.0"),
        ] {
            assert!(!compatible(plugin, host), "{plugin} on {host}");
        }
    }
}
