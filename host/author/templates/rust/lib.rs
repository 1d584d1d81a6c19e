//! `{{name}}`: a TaskFlow plugin. Payload: {"name": "Ada"} → {"greeting": "Hello, Ada!"}.
use serde::{Deserialize, Serialize};
use taskflow_sdk::{Error, Plugin, Result, Task};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

struct {{Type}};

impl Plugin for {{Type}} {
    fn process(task: Task) -> Result<Vec<u8>> {
        let input: Input = task.json()?; // bad JSON → an invalid-input error
        if input.name.is_empty() {
            return Err(Error::invalid_input("name is empty"));
        }
        taskflow_sdk::info(&format!("greeting {}", input.name));
        taskflow_sdk::progress(100);
        taskflow_sdk::json(&Output { greeting: format!("Hello, {}!", input.name) })
    }
}

taskflow_sdk::export_plugin!({{Type}});
