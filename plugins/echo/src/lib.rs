//! `echo`: returns its payload unchanged. The smallest useful plugin, and the
//! one the runtime benchmark uses to measure per-task overhead.
use taskflow_sdk::{Plugin, Result, Task};

struct Echo;

impl Plugin for Echo {
    fn process(task: Task) -> Result<Vec<u8>> {
        Ok(task.payload)
    }
}

taskflow_sdk::export_plugin!(Echo);
