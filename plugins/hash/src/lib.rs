//! `hash`: digests of the payload (SHA-256 and SHA-512), optionally iterated
//! to make a task CPU-bound on purpose.
//!
//! Payload: any bytes. If it is a JSON object with a `"data"` string, that
//! string is hashed and `"rounds"` (default 1, at most 1,000,000) re-hashes
//! the SHA-256 digest that many times.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use taskflow_sdk::{Error, Plugin, Result, Task};

const MAX_ROUNDS: u32 = 1_000_000;

#[derive(Deserialize)]
struct Input {
    data: String,
    #[serde(default = "one")]
    rounds: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize)]
struct Output {
    bytes: usize,
    rounds: u32,
    sha256: String,
    sha512: String,
}

struct Hash;

impl Plugin for Hash {
    fn process(task: Task) -> Result<Vec<u8>> {
        let (data, rounds) = match serde_json::from_slice::<Input>(&task.payload) {
            Ok(input) => (input.data.into_bytes(), input.rounds),
            Err(_) => (task.payload, 1),
        };
        if rounds == 0 || rounds > MAX_ROUNDS {
            return Err(Error::invalid_input(format!(
                "rounds must be 1..={MAX_ROUNDS}, got {rounds}"
            )));
        }
        let mut sha256 = Sha256::digest(&data);
        for round in 1..rounds {
            sha256 = Sha256::digest(sha256);
            if round % (MAX_ROUNDS / 100).max(1) == 0 {
                taskflow_sdk::progress((u64::from(round) * 100 / u64::from(rounds)) as u8);
            }
        }
        taskflow_sdk::json(&Output {
            bytes: data.len(),
            rounds,
            sha256: hex::encode(sha256),
            sha512: hex::encode(Sha512::digest(&data)),
        })
    }
}

taskflow_sdk::export_plugin!(Hash);
