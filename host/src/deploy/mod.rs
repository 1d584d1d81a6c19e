//! `taskflow deploy`: creates or updates TaskFlow's CloudFormation stack,
//! shows what it will change before it changes anything (unless `--yes`),
//! waits with the stack's events as progress, names the resource that
//! failed and why, and writes the stack's outputs into the env file under
//! the names `taskflow serve` reads. `--delete` tears the stack down.
//!
//! Region and credentials come from the AWS SDK's usual chain;
//! `AWS_ENDPOINT_URL` points it at an emulator.

mod stack;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

pub use stack::{ChangeSetOutcome, Event, ResourceChange, StackState, Stacks, first_failure};

/// The template built into this binary.
pub const TEMPLATE: &str = include_str!("../../../cloudformation/taskflow-infrastructure.yaml");

/// The comment above the settings `deploy` adds to the env file.
const ENV_HEADER: &str = "Written by `taskflow deploy` from stack";

/// Time between two looks at a stack being changed.
const POLL: Duration = Duration::from_secs(3);

/// `taskflow deploy` settings.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Stack name; also the prefix of its queue names.
    #[arg(long, env = "TASKFLOW_STACK_NAME", default_value = "taskflow")]
    pub stack_name: String,

    /// Template file [default: cloudformation/taskflow-infrastructure.yaml,
    /// as built into this binary].
    #[arg(long)]
    pub template: Option<PathBuf>,

    /// A template parameter, NAME=VALUE (repeat the flag), e.g.
    /// ContainerImage=…/taskflow:1.0 or Hosts=SelfManaged. On an update,
    /// parameters not given keep their current value.
    #[arg(long = "parameter", short = 'p', value_name = "NAME=VALUE", value_parser = parse_parameter)]
    pub parameters: Vec<(String, String)>,

    /// Apply without showing the change set and asking first.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Delete the stack (asks first, unless --yes) and remove the settings
    /// it wrote from the env file.
    #[arg(long, conflicts_with_all = ["template", "parameters"])]
    pub delete: bool,
}

fn parse_parameter(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// The parameters to send: those given, and on an update every other one
/// the stack has (and the template still declares, when CloudFormation
/// said which it declares) with its previous value.
fn parameters(
    given: &[(String, String)],
    previous: &[String],
    declared: &[String],
) -> Vec<Parameter> {
    let kept = previous
        .iter()
        .filter(|key| !given.iter().any(|(name, _)| name == *key))
        .filter(|key| declared.is_empty() || declared.contains(key))
        .map(|key| {
            Parameter::builder()
                .parameter_key(key)
                .use_previous_value(true)
                .build()
        });
    given
        .iter()
        .map(|(key, value)| {
            Parameter::builder()
                .parameter_key(key)
                .parameter_value(value)
                .build()
        })
        .chain(kept)
        .collect()
}

/// Stack outputs and the settings they become.
const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("Region", "AWS_REGION"),
    ("SqsQueuePrefix", "TASKFLOW_SQS_QUEUE_PREFIX"),
    ("SqsBands", "TASKFLOW_SQS_BANDS"),
    ("LeaseSecs", "TASKFLOW_LEASE_SECS"),
    ("S3Bucket", "TASKFLOW_S3_BUCKET"),
    ("DatabaseUrl", "TASKFLOW_DATABASE_URL"),
    ("ApiUrl", "TASKFLOW_SERVER"),
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

/// Runs `taskflow deploy`, writing into (or, with `--delete`, cleaning)
/// the env file at `env_file`.
pub async fn run(args: DeployArgs, env_file: &Path) -> anyhow::Result<()> {
    let sdk = crate::aws::sdk_config().await;
    let region = sdk
        .region()
        .map(ToString::to_string)
        .context("no AWS region: set AWS_REGION (or a region in your AWS profile)")?;
    let stacks = Stacks::new(&sdk);
    let name = args.stack_name.as_str();
    if args.delete {
        return delete(&stacks, name, &region, args.yes, env_file).await;
    }
    let body = match &args.template {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the template {}", path.display()))?,
        None => TEMPLATE.to_string(),
    };
    let (declared, mut capabilities) = stacks
        .validate(&body)
        .await
        .context("the template is not valid")?;
    if !declared.is_empty()
        && let Some((unknown, _)) = args.parameters.iter().find(|(n, _)| !declared.contains(n))
    {
        bail!(
            "the template has no parameter {unknown}; its parameters are {}",
            declared.join(", ")
        );
    }
    // The template creates IAM roles and a policy: deploying it is the
    // acknowledgement CloudFormation asks for.
    if !capabilities.contains(&Capability::CapabilityIam) {
        capabilities.push(Capability::CapabilityIam);
    }

    let existing = stacks.describe(name).await?;
    let creating = match &existing {
        None => true,
        Some(stack) if stack.in_progress() => bail!(
            "stack {name} is busy ({}): wait until it is done, then deploy again",
            stack.status
        ),
        Some(stack) if stack.status == "ROLLBACK_COMPLETE" => bail!(
            "stack {name} failed to create earlier (ROLLBACK_COMPLETE) and cannot be updated: \
             run `taskflow deploy --delete --stack-name {name}`, then deploy again"
        ),
        // Only a change set that was never executed: nothing exists yet.
        Some(stack) if stack.status == "REVIEW_IN_PROGRESS" => true,
        Some(_) => false,
    };
    let previous = existing
        .as_ref()
        .filter(|_| !creating)
        .map(|s| s.parameters.as_slice());
    let parameters = parameters(&args.parameters, previous.unwrap_or_default(), &declared);
    let verb = if creating { "create" } else { "update" };
    out!("Stack {name} in {region}: {verb}");

    let after = match &existing {
        Some(stack) if !creating => stacks.newest_event(&stack.id).await?,
        _ => None,
    };
    let change = Change {
        body: &body,
        parameters,
        capabilities,
    };
    let Some(started) = start(&stacks, name, existing.as_ref(), creating, args.yes, change).await?
    else {
        return Ok(());
    };
    let state = if started {
        let id = stacks
            .describe(name)
            .await?
            .map(|s| s.id)
            .context("the stack vanished while it was being changed")?;
        finish(&stacks, &id, after, verb).await?
    } else {
        out!("Stack {name} is up to date: nothing to change.");
        stacks.describe(name).await?.context("the stack vanished")?
    };

    write_settings(&state, name, &region, env_file)
}

/// What a create or an update sends.
struct Change<'a> {
    body: &'a str,
    parameters: Vec<Parameter>,
    capabilities: Vec<Capability>,
}

/// Starts creating or updating the stack: directly with `yes`, else
/// through a change set shown and confirmed first. `Some(false)` when there
/// is nothing to change, `None` when the answer was no.
async fn start(
    stacks: &Stacks,
    name: &str,
    existing: Option<&StackState>,
    creating: bool,
    yes: bool,
    change: Change<'_>,
) -> anyhow::Result<Option<bool>> {
    let Change {
        body,
        parameters,
        capabilities,
    } = change;
    let started = if yes {
        if let Some(stack) = existing.filter(|s| s.status == "REVIEW_IN_PROGRESS") {
            // A review left behind holds the name; it has no resources.
            stacks.delete(&stack.id).await?;
            while stacks
                .describe(&stack.id)
                .await?
                .is_some_and(|s| s.status != "DELETE_COMPLETE")
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if creating {
            stacks.create(name, body, parameters, capabilities).await?;
            true
        } else {
            stacks.update(name, body, parameters, capabilities).await?
        }
    } else {
        let change_set = chrono::Utc::now()
            .format("taskflow-%Y%m%d-%H%M%S")
            .to_string();
        let kind = if creating {
            ChangeSetType::Create
        } else {
            ChangeSetType::Update
        };
        match stacks
            .change_set(name, &change_set, kind, body, parameters, capabilities)
            .await?
        {
            ChangeSetOutcome::NoChanges => false,
            ChangeSetOutcome::Ready(changes) => {
                print_changes(&changes)?;
                if !confirm(&format!("Apply these changes to stack {name}?"))? {
                    stacks.delete_change_set(name, &change_set).await?;
                    if creating {
                        // The review stack holds the name and nothing else.
                        stacks.delete(name).await?;
                    }
                    out!("Nothing was changed (pass --yes to apply without being asked).");
                    return Ok(None);
                }
                stacks.execute_change_set(name, &change_set).await?;
                true
            }
        }
    };
    Ok(Some(started))
}

/// Writes the stack's settings into the env file and says what it did.
fn write_settings(
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
    let merged = crate::envfile::merge(
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
    if !settings.contains_key("TASKFLOW_DATABASE_URL") {
        out!(
            "Add TASKFLOW_DATABASE_URL (your PostgreSQL) to {} before `taskflow serve`.",
            env_file.display()
        );
    }
    Ok(())
}

/// `taskflow deploy --delete`.
async fn delete(
    stacks: &Stacks,
    name: &str,
    region: &str,
    yes: bool,
    env_file: &Path,
) -> anyhow::Result<()> {
    let Some(stack) = stacks.describe(name).await? else {
        out!("There is no stack {name} in {region}: nothing to delete.");
        return Ok(());
    };
    if stack.in_progress() {
        bail!(
            "stack {name} is busy ({}): wait until it is done",
            stack.status
        );
    }
    let outputs = |key: &str| {
        stack
            .outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if !yes
        && !confirm(&format!(
            "Delete stack {name} in {region} and everything it holds?"
        ))?
    {
        out!("Nothing was deleted (pass --yes to delete without being asked).");
        return Ok(());
    }
    let after = stacks.newest_event(&stack.id).await?;
    stacks.delete(&stack.id).await?;
    finish(stacks, &stack.id, after, "delete").await?;
    if let Some(bucket) = outputs("S3Bucket") {
        out!(
            "The bucket {bucket} is kept (its payloads and results outlive the stack): \
             empty and delete it yourself when they are no longer needed."
        );
    }
    if let Ok(settings) = settings_from_outputs(&stack.outputs) {
        let (removed, backup) =
            crate::envfile::remove(env_file, &settings, &format!("{ENV_HEADER} {name} "))?;
        if !removed.is_empty() {
            out!(
                "Removed {} from {}.",
                removed.join(", "),
                env_file.display()
            );
        }
        if let Some(backup) = backup {
            out!(
                "The previous {} is in {}.",
                env_file.display(),
                backup.display()
            );
        }
    }
    Ok(())
}

/// Waits for the operation, showing each event; fails naming the resource
/// that failed and why.
async fn finish(
    stacks: &Stacks,
    id: &str,
    after: Option<String>,
    verb: &str,
) -> anyhow::Result<StackState> {
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let waited = stacks
        .wait(id, after, POLL, |event, state| {
            progress.set_message(state.status.clone());
            // A line stdout cannot take (a closed pipe) is dropped; the
            // deployment goes on.
            progress.suspend(|| {
                let _ = writeln!(std::io::stdout().lock(), "{}", event_line(event));
            });
        })
        .await;
    progress.finish_and_clear();
    let (state, events) = waited?;
    if state.succeeded() {
        out!("Stack {verb}: {}", state.status);
        return Ok(state);
    }
    match first_failure(&events) {
        Some(failed) => bail!(
            "could not {verb} the stack ({}): {} ({}) {}: {}",
            state.status,
            failed.logical_id,
            failed.resource_type,
            failed.status,
            failed.reason.as_deref().unwrap_or("no reason given")
        ),
        None => bail!(
            "could not {verb} the stack ({}): {}",
            state.status,
            state
                .reason
                .as_deref()
                .unwrap_or("CloudFormation gave no reason")
        ),
    }
}

fn event_line(event: &Event) -> String {
    let mut line = format!(
        "{:<8} {:<28} {:<28} {}",
        event.time, event.status, event.logical_id, event.resource_type
    );
    if let Some(reason) = &event.reason {
        line.push_str(&format!("  {reason}"));
    }
    line
}

fn print_changes(changes: &[ResourceChange]) -> anyhow::Result<()> {
    if changes.is_empty() {
        out!("Change set: no resource changes (parameters or outputs only).");
        return Ok(());
    }
    out!("Change set ({} resources):", changes.len());
    out!(
        "  {:<8} {:<28} {:<44} replacement",
        "action",
        "resource",
        "type"
    );
    for change in changes {
        out!(
            "  {:<8} {:<28} {:<44} {}",
            change.action,
            change.logical_id,
            change.resource_type,
            change.replacement.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Asks on stdout, reads the answer from stdin: yes only for "y" or "yes";
/// no answer (stdin closed) is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    print!("{question} [y/N] ");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if answer.is_empty() {
        out!();
    }
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
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
        // Every setting is one `taskflow serve` (or the CLI, or the SDK) reads.
        let serve =
            <crate::config::ServeConfig as clap::Args>::augment_args(clap::Command::new("serve"));
        let read: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .chain([
                "TASKFLOW_SERVER".into(),
                "AWS_REGION".into(),
                "AWS_ENDPOINT_URL".into(),
            ])
            .collect();
        for key in settings.keys() {
            assert!(read.contains(key), "{key} is read by nobody");
        }
    }

    #[test]
    fn a_stack_without_the_queue_or_bucket_outputs_is_refused_by_name() {
        let missing = settings_from_outputs(&outputs(&[("S3Bucket", "b")])).err();
        assert_eq!(missing, Some(vec!["SqsQueuePrefix"]));
    }

    #[test]
    fn an_update_keeps_the_parameters_not_given() {
        let given = [("LeaseSecs".to_string(), "60".to_string())];
        let previous = [
            "Hosts".to_string(),
            "LeaseSecs".to_string(),
            "Gone".to_string(),
        ];
        let declared = ["Hosts".to_string(), "LeaseSecs".to_string()];
        let built = parameters(&given, &previous, &declared);
        let sent: Vec<_> = built
            .iter()
            .map(|p| {
                (
                    p.parameter_key(),
                    p.parameter_value(),
                    p.use_previous_value(),
                )
            })
            .collect();
        assert_eq!(
            sent,
            [
                (Some("LeaseSecs"), Some("60"), None),
                (Some("Hosts"), None, Some(true))
            ],
            "given values win; a parameter the template no longer declares is not sent"
        );
        // Creating: only what was given.
        assert_eq!(parameters(&given, &[], &declared).len(), 1);
    }

    #[test]
    fn parameters_are_name_equals_value() {
        assert_eq!(parse_parameter("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_parameter("=x").is_err());
        assert!(parse_parameter("x").is_err());
    }
}
