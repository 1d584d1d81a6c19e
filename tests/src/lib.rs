//! Helpers shared by TaskFlow's end-to-end tests: where the built plugins and
//! fixtures are, and how to get a runtime and registry over a scratch
//! directory.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A built example plugin, `plugins/dist/<name>.wasm`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    built(workspace_root().join("plugins/dist").join(format!("{name}.wasm")))
}

/// A built hostile fixture, `tests/fixtures/dist/<name>.wasm`.
pub fn fixture_wasm(name: &str) -> PathBuf {
    built(workspace_root().join("tests/fixtures/dist").join(format!("{name}.wasm")))
}

/// The bytes of a built plugin or fixture.
pub fn wasm_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `plugins/build.sh` (the README's test command does)",
        path.display()
    );
    path
}

/// Copies the named example plugins into `dir`, the way an operator drops
/// them into a plugin directory.
pub fn install_plugins(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for name in names {
        let target = dir.join(format!("{name}.wasm"));
        std::fs::copy(plugin_wasm(name), &target).unwrap_or_else(|e| panic!("cannot copy {name}: {e}"));
    }
}

/// Hex SHA-256 of a file, as the registry reports digests.
pub fn file_digest(path: &Path) -> String {
    taskflow::runtime::plugin::digest_of(&wasm_bytes(path))
}
