//! The process-wide wasmtime engine and the linker every plugin is checked
//! against.

use std::thread;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Processor;
use super::sandbox::Sandbox;
use super::{RuntimeConfig, RuntimeError};

/// How often the epoch advances. It is the granularity of task timeouts and
/// of the guest yielding back to the async executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine: component model, async, epoch interruption, and the
/// pooling allocator when the address space allows it.
pub fn build_engine(config: &RuntimeConfig) -> Result<(Engine, AllocatorKind), RuntimeError> {
    let mut base = Config::new();
    base.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel.is_some())
        .max_wasm_stack(config.max_wasm_stack);

    if config.pooling {
        let mut pooled = base.clone();
        let mut pool = PoolingAllocationConfig::new();
        let slots = config.max_concurrent_instances;
        // A Rust component has a handful of core instances (the program plus
        // adapter shims) and usually one memory; leave room for more.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots)
            .max_memory_size(config.max_memory_bytes)
            .max_memories_per_component(super::sandbox::MAX_MEMORIES as u32)
            // Reset small memories and tables of a finished task with memset
            // rather than madvise: an madvise per task means a TLB shootdown
            // across every core, which dominated short tasks under load.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
            Err(e) => tracing::warn!(
                error = %e,
                "pooling allocator unavailable (address space too small?); using on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&base).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok((engine, AllocatorKind::OnDemand))
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocatorKind {
    /// Pre-reserved slots: fast instantiation.
    Pooling,
    /// Memory mapped per instance.
    OnDemand,
}

/// The linker with WASI (granting nothing, see [`Sandbox`]) and the host
/// imports of the `processor` world.
pub fn build_linker(engine: &Engine) -> Result<Linker<Sandbox>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Processor::add_to_linker::<_, HasSelf<Sandbox>>(&mut linker, |sandbox| sandbox)
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped. A plain thread: it must keep ticking even when every async worker
/// thread is busy running guest code.
pub fn spawn_epoch_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("taskflow-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))
}
