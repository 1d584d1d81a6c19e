//! The process-wide wasmtime engine and the linker every plugin is checked
//! against.

use std::thread;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
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
        // With the kernel's PAGEMAP_SCAN (Linux 6.7+), a finished instance's
        // memory is reset by copying back only the pages it wrote, and they
        // stay mapped for the next instance in the slot: an interpreter
        // plugin (a snapshot of tens of megabytes, of which a task dirties a
        // few) then takes no page faults per task. Without it, wasmtime
        // would copy back the whole kept-resident span every time: keep that
        // span small and let the kernel drop the rest (madvise).
        for (pagemap, keep_resident) in [(Enabled::Yes, 64 << 20), (Enabled::No, 2 << 20)] {
            let mut pooled = base.clone();
            pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
                config,
                pagemap,
                keep_resident,
            )));
            match Engine::new(&pooled) {
                Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
                Err(e) if matches!(pagemap, Enabled::Yes) => {
                    tracing::debug!(error = %e, "PAGEMAP_SCAN unavailable; memory reset by madvise");
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "pooling allocator unavailable (address space too small?); using on-demand allocation"
                ),
            }
        }
    }
    let engine = Engine::new(&base).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok((engine, AllocatorKind::OnDemand))
}

/// The instance pool: `max_concurrent_instances` slots, each large enough
/// for the biggest plugin.
fn pool_config(
    config: &RuntimeConfig,
    pagemap: Enabled,
    keep_resident: usize,
) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    let slots = config.max_concurrent_instances;
    // A Rust component has a handful of core instances (the program plus
    // adapter shims) and usually one memory; a componentize-py one has 14
    // core instances.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(16))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(16))
        .total_stacks(slots)
        .max_memory_size(config.max_memory_bytes)
        .max_memories_per_component(super::sandbox::MAX_MEMORIES as u32)
        // A slot last used by the same plugin keeps its memory image
        // mapped: most instantiations need no mmap at all.
        .max_unused_warm_slots(slots)
        .pagemap_scan(pagemap)
        // Reset small memories and tables of a finished task in place
        // rather than with madvise: an madvise per task means a TLB
        // shootdown across every core, which dominated short tasks under
        // load.
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(64 << 10);
    pool
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
/// imports of the `processor` world, in every contract version served.
pub fn build_linker(engine: &Engine) -> Result<Linker<Sandbox>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    bindings::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
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
