//! `flaky`: fails with a retryable error until the attempt named in the
//! payload, then succeeds. Used to exercise retries and backoff.
//!
//! Payload: `{"succeed_on_attempt": 3}` (default 2).
use serde::{Deserialize, Serialize};
use taskflow_sdk::{Error, Plugin, Result, Task};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_attempt")]
    succeed_on_attempt: u32,
}

fn default_attempt() -> u32 {
    2
}

#[derive(Serialize)]
struct Output {
    succeeded_on_attempt: u32,
}

struct Flaky;

impl Plugin for Flaky {
    fn process(task: Task) -> Result<Vec<u8>> {
        let input: Input = task.json()?;
        // One log line and one line of stdout per attempt: the host keeps
        // both in the attempt's history.
        taskflow_sdk::info(&format!(
            "attempt {}, set to succeed on attempt {}",
            task.attempt, input.succeed_on_attempt
        ));
        println!("flaky stdout of attempt {}", task.attempt);
        if task.attempt < input.succeed_on_attempt {
            return Err(Error::retryable(format!(
                "attempt {} of a task set to succeed on attempt {}",
                task.attempt, input.succeed_on_attempt
            )));
        }
        taskflow_sdk::json(&Output {
            succeeded_on_attempt: task.attempt,
        })
    }
}

taskflow_sdk::export_plugin!(Flaky);
