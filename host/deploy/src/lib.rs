//! `taskflow deploy`: creates or updates TaskFlow's CloudFormation stack
//! the way a careful operator would: it says which account and region it
//! acts in before anything else, always makes a change set and shows it
//! (replacements of what holds data marked loudly), asks (unless `--yes`),
//! follows the stack's events, names the resource that failed, why, and
//! what to do next, writes the stack's outputs into the env file under the
//! names `taskflow serve` and the CLI read, then waits until the API answers
//! through the load balancer. `--image` pushes a local image and deploys it
//! by digest; `--wait` follows an operation already under way; `--delete`
//! tears the stack down.
//!
//! Region and credentials come from the AWS SDK's usual chain;
//! `AWS_ENDPOINT_URL` points it at an emulator.

mod account;
mod image;
mod review;
mod settings;
mod stack;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use taskflow_fs::out;

pub use review::data_loss;
pub use settings::{ENV_HEADER, settings_from_outputs};
pub use stack::{ChangeSetOutcome, Event, ResourceChange, StackState, Stacks, first_failure};

/// The template built into this binary.
pub const TEMPLATE: &str = include_str!("../../../cloudformation/taskflow-infrastructure.yaml");

/// Time between two looks at a stack being changed.
const POLL: Duration = Duration::from_secs(3);

/// `taskflow deploy` settings.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Stack name; also the prefix of its queue names.
    #[arg(long, env = "TASKFLOW_STACK_NAME", default_value = "taskflow", value_parser = parse_stack_name)]
    pub stack_name: String,

    /// Template file [default: cloudformation/taskflow-infrastructure.yaml,
    /// as built into this binary].
    #[arg(long)]
    pub template: Option<PathBuf>,

    /// A template parameter, NAME=VALUE (repeat the flag), e.g.
    /// CertificateArn=arn:aws:acm:… or Hosts=SelfManaged. On an update,
    /// parameters not given keep their current value.
    #[arg(long = "parameter", short = 'p', value_name = "NAME=VALUE", value_parser = parse_parameter)]
    pub parameters: Vec<(String, String)>,

    /// A local image (podman's or docker's) to push to the stack's
    /// repository and run by its digest, e.g. `taskflow:latest`. A stack
    /// without a repository yet is deployed first, without hosts.
    #[arg(long, value_name = "LOCAL_IMAGE")]
    pub image: Option<String>,

    /// Push --image to this repository instead of the stack's ECR one,
    /// e.g. registry.example.com/taskflow.
    #[arg(long, value_name = "REPOSITORY", requires = "image")]
    pub registry: Option<String>,

    /// The --registry speaks plain HTTP or has a certificate this machine
    /// does not trust (a local test registry).
    #[arg(long, requires = "registry")]
    pub insecure_registry: bool,

    /// Apply the change set without asking (it is still made and shown).
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Follow an operation already under way on the stack (one an
    /// interrupted deploy left running) to its end, then write the settings.
    #[arg(long, conflicts_with_all = ["template", "parameters", "image", "delete"])]
    pub wait: bool,

    /// How long to wait after a deploy for the API to answer /ready through
    /// the load balancer, in seconds (0: do not wait).
    #[arg(long, default_value_t = 900)]
    pub ready_timeout_secs: u64,

    /// Delete the stack (asks first, unless --yes) and remove the settings
    /// it wrote from the env file.
    #[arg(long, conflicts_with_all = ["template", "parameters", "image"])]
    pub delete: bool,
}

/// A CloudFormation stack name: a letter, then letters, digits and
/// hyphens, at most 128 characters.
fn parse_stack_name(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
        && text.len() <= 128;
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a stack name: start with a letter and use only letters, digits and hyphens (at most 128)"
        ))
    }
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

/// Runs `taskflow deploy`, writing into (or, with `--delete`, cleaning)
/// the env file at `env_file`; `from_env_file` names the settings that came
/// from that file, so that a region it holds is never used unsaid.
pub async fn run(
    args: DeployArgs,
    env_file: &Path,
    from_env_file: &[String],
) -> anyhow::Result<()> {
    let sdk = taskflow_aws::sdk_config().await;
    let region = sdk.region().map(ToString::to_string).context(
        "no AWS region: set AWS_REGION, or a region in your AWS profile (`aws configure`)",
    )?;
    let account = account::identify(&sdk, &region).await?;
    out!("Account  {} as {}", account.id, account.arn);
    out!(
        "Region   {region} {}",
        account::source("AWS_REGION", from_env_file, env_file)
    );
    if let Some(endpoint) = sdk.endpoint_url() {
        out!(
            "Endpoint {endpoint} {}",
            account::source("AWS_ENDPOINT_URL", from_env_file, env_file)
        );
    }
    let stacks = Stacks::new(&sdk);
    let name = args.stack_name.as_str();
    if args.delete {
        return delete(&stacks, name, &region, args.yes, env_file).await;
    }
    if args.wait {
        return follow(&stacks, name, &region, env_file).await;
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
    let plan = Plan {
        stacks: &stacks,
        name,
        region: &region,
        body: &body,
        declared: &declared,
        capabilities,
        yes: args.yes,
        env_file,
    };

    let mut given = args.parameters.clone();
    if let Some(local) = &args.image {
        let tool = image::Tool::find()?;
        let repository = match &args.registry {
            Some(repository) => repository.clone(),
            None => match repository_of(&stacks, name).await? {
                Some(repository) => repository,
                None => {
                    out!(
                        "Stack {name} has no image repository yet: deploying it first, without hosts."
                    );
                    let Some(state) = plan.apply(&given).await? else {
                        return Ok(());
                    };
                    state
                        .output("ImageRepositoryUri")
                        .context("the stack has no ImageRepositoryUri output (Hosts=SelfManaged has no repository): pass --registry to push elsewhere")?
                        .to_string()
                }
            },
        };
        let target = image::Target {
            repository,
            insecure: args.insecure_registry,
        };
        let reference = image::push(&sdk, &tool, local, &target).await?;
        out!("Pushed: the hosts run {reference}");
        given.retain(|(key, _)| key != "ContainerImage");
        given.push(("ContainerImage".into(), reference));
    }
    let Some(state) = plan.apply(&given).await? else {
        return Ok(());
    };
    after_deploy(
        &state,
        env_file,
        Duration::from_secs(args.ready_timeout_secs),
    )
    .await
}

/// The stack's image repository, when the stack exists and has one.
async fn repository_of(stacks: &Stacks, name: &str) -> anyhow::Result<Option<String>> {
    Ok(stacks
        .describe(name)
        .await?
        .and_then(|stack| stack.output("ImageRepositoryUri").map(str::to_string)))
}

/// One template going to one stack.
struct Plan<'a> {
    stacks: &'a Stacks,
    name: &'a str,
    region: &'a str,
    body: &'a str,
    declared: &'a [String],
    capabilities: Vec<Capability>,
    yes: bool,
    env_file: &'a Path,
}

impl Plan<'_> {
    /// Makes a change set with the `given` parameters, shows it, asks
    /// (unless `yes`), executes it, follows it and writes the settings.
    /// `None` when the answer was no.
    async fn apply(&self, given: &[(String, String)]) -> anyhow::Result<Option<StackState>> {
        let (stacks, name) = (self.stacks, self.name);
        let existing = stacks.describe(name).await?;
        if let Some(stack) = &existing {
            usable(stack, name)?;
        }
        // A stack in review holds a change set never executed: nothing exists.
        let creating = existing
            .as_ref()
            .is_none_or(|stack| stack.status == "REVIEW_IN_PROGRESS");
        let previous = existing
            .as_ref()
            .filter(|_| !creating)
            .map(|s| s.parameters.as_slice());
        let parameters = parameters(given, previous.unwrap_or_default(), self.declared);
        let verb = if creating { "create" } else { "update" };
        out!("Stack {name}: {verb}");
        let after = match &existing {
            Some(stack) if !creating => stacks.newest_event(&stack.id).await?,
            _ => None,
        };
        // Unique, not only per second: an emulator that looks change sets
        // up by name alone (moto) must not take another stack's.
        let change_set = format!(
            "{}-{}",
            chrono::Utc::now().format("taskflow-%Y%m%d-%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let kind = if creating {
            ChangeSetType::Create
        } else {
            ChangeSetType::Update
        };
        let outcome = stacks
            .change_set(
                name,
                &change_set,
                kind,
                self.body,
                parameters,
                self.capabilities.clone(),
            )
            .await?;
        let state = match outcome {
            ChangeSetOutcome::NoChanges => {
                out!("Stack {name} is up to date: nothing to change.");
                stacks.describe(name).await?.context("the stack vanished")?
            }
            ChangeSetOutcome::Ready(changes) => {
                review::print_changes(&changes)?;
                if !self.yes && !review::confirm(&format!("Apply these changes to stack {name}?"))?
                {
                    stacks.delete_change_set(name, &change_set).await?;
                    if creating {
                        // The review stack holds the name and nothing else.
                        stacks.delete(name).await?;
                    }
                    out!("Nothing was changed (pass --yes to apply without being asked).");
                    return Ok(None);
                }
                stacks.execute_change_set(name, &change_set).await?;
                let id = stacks
                    .describe(name)
                    .await?
                    .map(|s| s.id)
                    .context("the stack vanished while it was being changed")?;
                finish(stacks, name, &id, after, verb).await?
            }
        };
        settings::write_settings(&state, name, self.region, self.env_file)?;
        Ok(Some(state))
    }
}

/// Refuses a stack that cannot take a change now, naming the next step.
fn usable(stack: &StackState, name: &str) -> anyhow::Result<()> {
    if stack.in_progress() {
        bail!(
            "stack {name} is busy ({}): `taskflow deploy --wait --stack-name {name}` follows it to its end; deploy again after",
            stack.status
        );
    }
    match stack.status.as_str() {
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "DELETE_FAILED" | "UPDATE_ROLLBACK_FAILED" => {
            bail!(
                "stack {name} is {}{}: {}",
                stack.status,
                stack
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                next_step(&stack.status, name)
            )
        }
        _ => Ok(()),
    }
}

/// What to do about a stack left in `status`.
fn next_step(status: &str, name: &str) -> String {
    match status {
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" => format!(
            "it was never created; fix the cause, then `taskflow deploy --delete --stack-name {name}` and deploy again"
        ),
        "UPDATE_ROLLBACK_COMPLETE" => {
            "the stack is back as it was before the update; fix the cause and deploy again".into()
        }
        "UPDATE_ROLLBACK_FAILED" => format!(
            "the update could not be rolled back; fix what the failed resource needs, then `aws cloudformation continue-update-rollback --stack-name {name}` (with --resources-to-skip for resources that cannot roll back), then deploy again"
        ),
        "DELETE_FAILED" => format!(
            "some resources could not be deleted (named in the stack's events); remove what holds them, then `taskflow deploy --delete --stack-name {name}` again"
        ),
        _ => "see the stack's events in the CloudFormation console".into(),
    }
}

/// `taskflow deploy --wait`: follows the operation under way, if any.
async fn follow(stacks: &Stacks, name: &str, region: &str, env_file: &Path) -> anyhow::Result<()> {
    let Some(stack) = stacks.describe(name).await? else {
        bail!("there is no stack {name} in {region} to wait for");
    };
    if !stack.in_progress() {
        out!(
            "Nothing is under way on stack {name}: it is {}.",
            stack.status
        );
        return usable(&stack, name);
    }
    let verb = match stack.status.split('_').next() {
        Some("CREATE") => "create",
        Some("DELETE") => "delete",
        Some("ROLLBACK") => "roll back",
        _ => "update",
    };
    out!(
        "Following the {verb} under way on stack {name} ({}).",
        stack.status
    );
    let after = stacks.newest_event(&stack.id).await?;
    let state = finish(stacks, name, &stack.id, after, verb).await?;
    if verb != "delete" {
        settings::write_settings(&state, name, region, env_file)?;
    }
    Ok(())
}

/// After a deploy: says how the API is served, waits until it answers
/// `/ready` through the load balancer, and prints the next steps.
async fn after_deploy(state: &StackState, env_file: &Path, limit: Duration) -> anyhow::Result<()> {
    let Some(api) = state.output("ApiUrl") else {
        out!(
            "Next: add TASKFLOW_DATABASE_URL (your PostgreSQL) to {}, start hosts with `taskflow serve` beside it and `taskflow lb` in front, then `taskflow plugins upload <plugin.wasm>` and `taskflow submit <plugin> --payload <json> --wait`.",
            env_file.display()
        );
        return Ok(());
    };
    if api.starts_with("http://") {
        out!(
            "WARNING: the API is served over plain HTTP at {api}: tokens and payloads cross the network unencrypted. Deploy with --parameter CertificateArn=<an ACM certificate's ARN> to serve HTTPS."
        );
    }
    if state.parameter("ContainerImage").is_none_or(str::is_empty) {
        out!(
            "No hosts run yet (no image): build the image, then `taskflow deploy --image taskflow:latest` (README, On AWS)."
        );
        return Ok(());
    }
    if !limit.is_zero() {
        wait_until_ready(api, limit).await?;
    }
    out!(
        "Next (the CLI reads the server and its token's secret from {}):",
        env_file.display()
    );
    out!("  taskflow plugins upload plugins/dist/wordcount.wasm");
    out!(r#"  taskflow submit wordcount --payload '{{"text": "the cat and the hat"}}' --wait"#);
    Ok(())
}

/// Polls `GET {api}/ready` until it answers 200 or `limit` passes.
async fn wait_until_ready(api: &str, limit: Duration) -> anyhow::Result<()> {
    let url = format!("{}/ready", api.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot make an HTTP client")?;
    let progress = ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    let deadline = std::time::Instant::now() + limit;
    let failure = loop {
        let answer = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => break None,
            Ok(response) => format!("answers {}", response.status()),
            Err(error) => format!("does not answer ({error})"),
        };
        progress.set_message(format!("waiting for {url}: it {answer}"));
        if std::time::Instant::now() > deadline {
            break Some(answer);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    progress.finish_and_clear();
    match failure {
        None => {
            out!("The API answers at {api}.");
            Ok(())
        }
        Some(answer) => bail!(
            "{url} still {answer} after {} s: look at the hosts' logs (the LogGroup output) and the service's events in the ECS console",
            limit.as_secs()
        ),
    }
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
            "stack {name} is busy ({}): `taskflow deploy --wait --stack-name {name}` follows it to its end",
            stack.status
        );
    }
    if !yes
        && !review::confirm(&format!(
            "Delete stack {name} in {region} and everything it holds?"
        ))?
    {
        out!("Nothing was deleted (pass --yes to delete without being asked).");
        return Ok(());
    }
    let after = stacks.newest_event(&stack.id).await?;
    stacks.delete(&stack.id).await?;
    finish(stacks, name, &stack.id, after, "delete").await?;
    if let Some(bucket) = stack.output("S3Bucket") {
        out!(
            "The bucket {bucket} is kept (its payloads and results outlive the stack): \
             empty and delete it yourself when they are no longer needed."
        );
    }
    if let Ok(settings) = settings_from_outputs(&stack.outputs) {
        let (removed, backup) =
            taskflow_fs::envfile::remove(env_file, &settings, &format!("{ENV_HEADER} {name} "))?;
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
/// that failed, why, and what to do next. Ctrl-C stops the waiting, not the
/// operation, and says how to follow it again.
async fn finish(
    stacks: &Stacks,
    name: &str,
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
    let waiting = stacks.wait(id, after, POLL, |event, state| {
        progress.set_message(state.status.clone());
        // A line stdout cannot take (a closed pipe) is dropped; the
        // deployment goes on.
        progress.suspend(|| {
            let _ = writeln!(std::io::stdout().lock(), "{}", event_line(event));
        });
    });
    let waited = tokio::select! {
        waited = waiting => waited,
        _ = tokio::signal::ctrl_c() => {
            progress.finish_and_clear();
            bail!(
                "interrupted: CloudFormation goes on with the {verb} of stack {name}; `taskflow deploy --wait --stack-name {name}` follows it again"
            );
        }
    };
    progress.finish_and_clear();
    let (state, events) = waited?;
    if state.succeeded() {
        out!("Stack {verb}: {}", state.status);
        return Ok(state);
    }
    let cause = match first_failure(&events) {
        Some(failed) => format!(
            "{} ({}) {}: {}",
            failed.logical_id,
            failed.resource_type,
            failed.status,
            failed.reason.as_deref().unwrap_or("no reason given")
        ),
        None => state
            .reason
            .clone()
            .unwrap_or_else(|| "CloudFormation gave no reason".into()),
    };
    bail!(
        "could not {verb} the stack ({}): {cause}. Next: {}",
        state.status,
        next_step(&state.status, name)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn stack_names_are_checked_before_anything_is_asked() {
        for good in ["taskflow", "tf-1a2b", "A"] {
            assert_eq!(parse_stack_name(good).as_deref(), Ok(good));
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            "1taskflow",
            "bad_name",
            "bad name",
            "ünï",
            long.as_str(),
        ] {
            assert!(parse_stack_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parameters_are_name_equals_value() {
        assert_eq!(parse_parameter("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_parameter("=x").is_err());
        assert!(parse_parameter("x").is_err());
    }
}
