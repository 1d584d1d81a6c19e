//! `wordcount`: counts lines, words and characters of a text and lists its
//! most frequent words.
//!
//! Payload: `{"text": "...", "top": 10}` (`top` optional), or plain UTF-8 text.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use taskflow_sdk::{Plugin, Result, Task};

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "ten")]
    top: usize,
}

fn ten() -> usize {
    10
}

#[derive(Serialize)]
struct Output {
    lines: usize,
    words: usize,
    chars: usize,
    top_words: Vec<WordCount>,
}

#[derive(Serialize)]
struct WordCount {
    word: String,
    count: usize,
}

struct Wordcount;

impl Plugin for Wordcount {
    fn process(task: Task) -> Result<Vec<u8>> {
        let input = match task.json::<Input>() {
            Ok(input) => input,
            Err(_) => Input {
                text: task.text()?.to_owned(),
                top: ten(),
            },
        };
        taskflow_sdk::json(&count(&input.text, input.top))
    }
}

fn count(text: &str, top: usize) -> Output {
    let mut frequencies: HashMap<String, usize> = HashMap::new();
    let mut words = 0;
    for word in text.split_whitespace() {
        words += 1;
        let normalised: String = word
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .flat_map(char::to_lowercase)
            .collect();
        if !normalised.is_empty() {
            *frequencies.entry(normalised).or_default() += 1;
        }
    }
    let mut top_words: Vec<WordCount> = frequencies
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    // Most frequent first; ties alphabetically so the output is deterministic.
    top_words.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top_words.truncate(top);
    Output {
        lines: text.lines().count(),
        words,
        chars: text.chars().count(),
        top_words,
    }
}

taskflow_sdk::export_plugin!(Wordcount);
