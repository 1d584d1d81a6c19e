//! Host-side bindings for the `processor` world, generated in this one
//! place for both contract versions the host serves: the current one
//! (`wit/processor.wit`) and the previous minor version (`wit/0.1/`).
//!
//! The rest of the runtime sees the current contract only: [`ProcessorPre`]
//! and [`Processor`] hide which version a plugin was built for, and a
//! previous-version plugin's host calls land in the current implementation.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::contract::Contract;
use super::sandbox::Sandbox;

mod current {
    wasmtime::component::bindgen!({
        world: "processor",
        path: "../../wit",
        exports: { default: async },
    });
}

mod previous {
    wasmtime::component::bindgen!({
        world: "processor",
        path: "../../wit/0.1",
        exports: { default: async },
    });
}

pub use self::current::taskflow::plugin::host::{Host, LogLevel};
pub use self::current::taskflow::plugin::types::{
    Host as TypesHost, Task as WitTask, TaskError as WitTaskError,
};

/// A plugin linked and type-checked against the contract it was built for,
/// ready to instantiate.
pub enum ProcessorPre {
    /// Built for the current contract.
    Current(current::ProcessorPre<Sandbox>),
    /// Built for the previous minor version.
    Previous(previous::ProcessorPre<Sandbox>),
}

/// One instance of a plugin.
pub enum Processor {
    /// Built for the current contract.
    Current(current::Processor),
    /// Built for the previous minor version.
    Previous(previous::Processor),
}

/// Adds the host side of every served contract to `linker`.
pub fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    current::Processor::add_to_linker::<_, HasSelf<Sandbox>>(linker, |sandbox| sandbox)?;
    previous::Processor::add_to_linker::<_, HasSelf<Sandbox>>(linker, |sandbox| sandbox)
}

impl ProcessorPre {
    /// Checks that `pre` implements the `processor` world of `contract`.
    pub fn new(pre: InstancePre<Sandbox>, contract: Contract) -> wasmtime::Result<Self> {
        Ok(match contract {
            Contract::Current => Self::Current(current::ProcessorPre::new(pre)?),
            Contract::Previous => Self::Previous(previous::ProcessorPre::new(pre)?),
        })
    }

    /// A fresh instance in `store`.
    pub async fn instantiate_async(
        &self,
        store: &mut Store<Sandbox>,
    ) -> wasmtime::Result<Processor> {
        Ok(match self {
            Self::Current(pre) => Processor::Current(pre.instantiate_async(store).await?),
            Self::Previous(pre) => Processor::Previous(pre.instantiate_async(store).await?),
        })
    }
}

impl Processor {
    /// Calls the plugin's `process` export with `task`.
    pub async fn call_process(
        &self,
        store: &mut Store<Sandbox>,
        task: &WitTask,
    ) -> wasmtime::Result<Result<Vec<u8>, WitTaskError>> {
        match self {
            Self::Current(processor) => processor.call_process(store, task).await,
            Self::Previous(processor) => {
                use previous::taskflow::plugin::types::{Task, TaskError};
                let task = Task {
                    id: task.id.clone(),
                    plugin: task.plugin.clone(),
                    priority: task.priority,
                    attempt: task.attempt,
                    payload: task.payload.clone(),
                };
                let output = processor.call_process(store, &task).await?;
                Ok(output.map_err(|error| match error {
                    TaskError::Retryable(m) => WitTaskError::Retryable(m),
                    TaskError::InvalidInput(m) => WitTaskError::InvalidInput(m),
                    TaskError::Fatal(m) => WitTaskError::Fatal(m),
                }))
            }
        }
    }
}

// 0.1.0's host imports are 0.2.0's without `remaining-millis`.
impl previous::taskflow::plugin::types::Host for Sandbox {}

impl previous::taskflow::plugin::host::Host for Sandbox {
    fn log(&mut self, level: previous::taskflow::plugin::host::LogLevel, message: String) {
        use previous::taskflow::plugin::host::LogLevel as Previous;
        let level = match level {
            Previous::Trace => LogLevel::Trace,
            Previous::Debug => LogLevel::Debug,
            Previous::Info => LogLevel::Info,
            Previous::Warn => LogLevel::Warn,
            Previous::Error => LogLevel::Error,
        };
        Host::log(self, level, message);
    }

    fn progress(&mut self, percent: u8) {
        Host::progress(self, percent);
    }
}
