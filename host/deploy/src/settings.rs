//! The settings a stack's outputs become: what `taskflow serve` and the CLI
//! read, written into the env file beside what it already holds.

use std::collections::BTreeMap;
use std::path::Path;

use taskflow_fs::out;

use super::StackState;

/// The comment above the settings `deploy` adds to the env file.
pub const ENV_HEADER: &str = "Written by `taskflow deploy` from stack";

/// Stack outputs and the settings they become.
const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("Region", "AWS_REGION"),
    ("SqsQueuePrefix", "TASKFLOW_SQS_QUEUE_PREFIX"),
    ("SqsBands", "TASKFLOW_SQS_BANDS"),
    ("LeaseSecs", "TASKFLOW_LEASE_SECS"),
    ("S3Bucket", "TASKFLOW_S3_BUCKET"),
    ("DatabaseUrl", "TASKFLOW_DATABASE_URL"),
    ("DatabaseSecretArn", "TASKFLOW_DATABASE_SECRET"),
    ("ApiUrl", "TASKFLOW_SERVER"),
    // The secrets that hold the tokens, never the tokens: the CLI reads
    // them with the caller's own AWS credentials.
    ("ApiTokenSecretArn", "TASKFLOW_TOKEN_SECRET"),
    ("AdminTokenSecretArn", "TASKFLOW_ADMIN_TOKEN_SECRET"),
];

/// Outputs without which hosts cannot use the stack.
const REQUIRED_OUTPUTS: &[&str] = &["SqsQueuePrefix", "S3Bucket"];

/// The settings a host of the stack needs, from its outputs: the backends
/// (SQS, S3, PostgreSQL) and where they are.
pub fn settings_from_outputs(
    outputs: &[(String, String)],
) -> Result<BTreeMap<String, String>, Vec<&'static str>> {
    let output = |name: &str| outputs.iter().find(|(key, _)| key == name).map(|(_, v)| v);
    let missing: Vec<&str> = REQUIRED_OUTPUTS
        .iter()
        .copied()
        .filter(|name| output(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut settings: BTreeMap<String, String> = OUTPUT_SETTINGS
        .iter()
        .filter_map(|(name, key)| Some((key.to_string(), output(name)?.clone())))
        .collect();
    for (key, value) in [
        ("TASKFLOW_QUEUE", "sqs"),
        ("TASKFLOW_BLOBS", "s3"),
        ("TASKFLOW_STORAGE", "postgres"),
    ] {
        settings.insert(key.into(), value.into());
    }
    // A stack in an emulator is reached through it.
    if let Some(endpoint) = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|e| !e.is_empty())
    {
        settings.insert("AWS_ENDPOINT_URL".into(), endpoint);
    }
    Ok(settings)
}

/// Writes the stack's settings into the env file and says what it did.
pub fn write_settings(
    state: &StackState,
    name: &str,
    region: &str,
    env_file: &Path,
) -> anyhow::Result<()> {
    let settings = settings_from_outputs(&state.outputs).map_err(|missing| {
        anyhow::anyhow!(
            "stack {name} has no output {}: was it made from TaskFlow's template?",
            missing.join(", ")
        )
    })?;
    let merged = taskflow_fs::envfile::merge(
        env_file,
        &settings,
        &format!("{ENV_HEADER} {name} ({region})"),
    )?;
    out!(
        "Wrote {} settings into {}:",
        settings.len(),
        env_file.display()
    );
    for (key, value) in &settings {
        out!("  {key}={value}");
    }
    if let Some(backup) = merged.backup {
        out!(
            "The previous {} is in {}.",
            env_file.display(),
            backup.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn outputs_become_the_settings_serve_reads() {
        let settings = settings_from_outputs(&outputs(&[
            ("SqsQueuePrefix", "prod"),
            ("S3Bucket", "prod-blobs"),
            ("Region", "eu-west-1"),
            ("DatabaseUrl", "postgres://taskflow@db:5432/taskflow"),
            ("BandQueue1Url", "https://sqs…/prod-band-1"),
        ]))
        .map_err(|missing| anyhow::anyhow!("{missing:?}"));
        let settings = settings.expect("all required outputs are there");
        assert_eq!(settings["TASKFLOW_SQS_QUEUE_PREFIX"], "prod");
        assert_eq!(settings["TASKFLOW_S3_BUCKET"], "prod-blobs");
        assert_eq!(settings["AWS_REGION"], "eu-west-1");
        assert_eq!(
            settings["TASKFLOW_DATABASE_URL"],
            "postgres://taskflow@db:5432/taskflow"
        );
        assert_eq!(settings["TASKFLOW_QUEUE"], "sqs");
        assert_eq!(settings["TASKFLOW_BLOBS"], "s3");
        assert_eq!(settings["TASKFLOW_STORAGE"], "postgres");
        assert!(
            !settings.contains_key("TASKFLOW_SERVER"),
            "no ApiUrl output, no server setting"
        );
        // That `taskflow serve` reads each of them is tested beside serve
        // (tests/tests/deploy.rs).
    }

    #[test]
    fn a_stack_without_the_queue_or_bucket_outputs_is_refused_by_name() {
        let missing = settings_from_outputs(&outputs(&[("S3Bucket", "b")])).err();
        assert_eq!(missing, Some(vec!["SqsQueuePrefix"]));
    }
}
