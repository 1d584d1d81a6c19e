//! Host-side bindings for the `processor` world, generated in this one place.

wasmtime::component::bindgen!({
    world: "processor",
    path: "../wit",
    exports: { default: async },
});

pub use self::taskflow::plugin::host::LogLevel;
pub use self::taskflow::plugin::types::{Task as WitTask, TaskError as WitTaskError};
