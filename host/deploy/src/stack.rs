//! The CloudFormation calls `taskflow deploy` makes, and the reading of a
//! stack's events: which to show while waiting, and which resource failed.

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudformation::types::{
    Capability, ChangeSetStatus, ChangeSetType, Parameter, StackEvent, StackStatus,
};

use taskflow_aws::error_text;

/// A CloudFormation call that failed, with what the service said.
#[derive(Debug, thiserror::Error)]
#[error("CloudFormation {call}: {message}")]
pub struct CallError {
    /// The call, e.g. "CreateChangeSet".
    pub call: &'static str,
    /// The service's answer, or the cause of the failure to ask.
    pub message: String,
}

fn call_error<E, R>(call: &'static str) -> impl FnOnce(SdkError<E, R>) -> CallError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    move |error| CallError {
        call,
        message: error_text(&error),
    }
}

/// A stack as `deploy` needs to know it.
#[derive(Debug, Clone)]
pub struct StackState {
    /// Its ARN: describes it even once deleted.
    pub id: String,
    /// e.g. CREATE_COMPLETE.
    pub status: String,
    /// Why it is in that status, where CloudFormation says.
    pub reason: Option<String>,
    /// Its parameters' names.
    pub parameters: Vec<String>,
    /// Its parameters' values, by name (`****` for a NoEcho one).
    pub parameter_values: Vec<(String, String)>,
    /// Its outputs, name and value.
    pub outputs: Vec<(String, String)>,
}

impl StackState {
    /// The value of output `name`.
    pub fn output(&self, name: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of parameter `name`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameter_values
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether an operation on the stack is still running.
    pub fn in_progress(&self) -> bool {
        self.status.ends_with("_IN_PROGRESS") && self.status != "REVIEW_IN_PROGRESS"
    }

    /// Whether the last operation ended as asked.
    pub fn succeeded(&self) -> bool {
        matches!(
            self.status.as_str(),
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "DELETE_COMPLETE" | "IMPORT_COMPLETE"
        )
    }
}

/// One resource of a change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChange {
    /// Add, Modify, Remove, …
    pub action: String,
    /// The resource's name in the template.
    pub logical_id: String,
    /// e.g. AWS::SQS::Queue.
    pub resource_type: String,
    /// For a modification: True, False or Conditional.
    pub replacement: Option<String>,
}

/// What became of a change set once CloudFormation had worked it out.
#[derive(Debug)]
pub enum ChangeSetOutcome {
    /// Ready to execute.
    Ready(Vec<ResourceChange>),
    /// The stack already matches the template and parameters.
    NoChanges,
}

/// One line of progress: an event of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique per event.
    pub id: String,
    /// When it happened (UTC time of day).
    pub time: String,
    /// The resource's name in the template (the stack's own name for the
    /// stack).
    pub logical_id: String,
    /// e.g. AWS::S3::Bucket.
    pub resource_type: String,
    /// e.g. CREATE_FAILED.
    pub status: String,
    /// CloudFormation's explanation.
    pub reason: Option<String>,
}

impl Event {
    fn from_sdk(event: &StackEvent) -> Self {
        Self {
            id: event.event_id().unwrap_or_default().to_string(),
            time: event
                .timestamp()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0))
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default(),
            logical_id: event.logical_resource_id().unwrap_or_default().to_string(),
            resource_type: event.resource_type().unwrap_or_default().to_string(),
            status: event
                .resource_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            reason: event.resource_status_reason().map(str::to_string),
        }
    }
}

/// The failure that explains an operation's end: the first resource that
/// failed for a reason of its own (not one cancelled because another
/// failed), else the first failure at all.
pub fn first_failure(events: &[Event]) -> Option<&Event> {
    let failed = || events.iter().filter(|e| e.status.ends_with("_FAILED"));
    let own_reason = |e: &&Event| {
        !e.reason.as_deref().is_some_and(|r| {
            r.contains("cancelled")
                || r.contains("failed to create:")
                || r.contains("failed to update:")
                || r.starts_with("The following resource(s) failed")
        })
    };
    failed().find(own_reason).or_else(|| failed().next())
}

/// The stacks of one account and region.
#[derive(Debug, Clone)]
pub struct Stacks {
    client: Client,
}

impl Stacks {
    /// A client from the SDK's settings.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::new(sdk),
        }
    }

    /// Asks CloudFormation whether the template is well formed; returns the
    /// parameter names it declares (empty when the service does not say) and
    /// the capabilities it needs.
    pub async fn validate(&self, body: &str) -> Result<(Vec<String>, Vec<Capability>), CallError> {
        let out = self
            .client
            .validate_template()
            .template_body(body)
            .send()
            .await
            .map_err(call_error("ValidateTemplate"))?;
        let names = out
            .parameters()
            .iter()
            .filter_map(|p| p.parameter_key().map(str::to_string))
            .collect();
        Ok((names, out.capabilities().to_vec()))
    }

    /// The stack named (or with this ARN), or `None` when there is none.
    pub async fn describe(&self, name_or_id: &str) -> Result<Option<StackState>, CallError> {
        let out = match self
            .client
            .describe_stacks()
            .stack_name(name_or_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(service))
                if service
                    .err()
                    .message()
                    .is_some_and(|m| m.contains("does not exist")) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(call_error("DescribeStacks")(error)),
        };
        Ok(out.stacks().first().map(|stack| StackState {
            id: stack.stack_id().unwrap_or(name_or_id).to_string(),
            status: stack
                .stack_status()
                .map(StackStatus::as_str)
                .unwrap_or_default()
                .to_string(),
            reason: stack.stack_status_reason().map(str::to_string),
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| p.parameter_key().map(str::to_string))
                .collect(),
            parameter_values: stack
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_string(),
                        p.parameter_value().unwrap_or_default().to_string(),
                    ))
                })
                .collect(),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
                .collect(),
        }))
    }

    /// The stack's events, oldest first, down to (not including) the event
    /// `after`; all of them when `after` is `None`.
    pub async fn events(&self, stack: &str, after: Option<&str>) -> Result<Vec<Event>, CallError> {
        let mut events = Vec::new();
        let mut pages = self
            .client
            .describe_stack_events()
            .stack_name(stack)
            .into_paginator()
            .send();
        'pages: while let Some(page) = pages.next().await {
            let page = page.map_err(call_error("DescribeStackEvents"))?;
            for event in page.stack_events() {
                let event = Event::from_sdk(event);
                if after == Some(event.id.as_str()) {
                    break 'pages;
                }
                events.push(event);
            }
        }
        events.reverse();
        Ok(events)
    }

    /// The id of the stack's newest event: what came before an operation.
    pub async fn newest_event(&self, stack: &str) -> Result<Option<String>, CallError> {
        let page = self
            .client
            .describe_stack_events()
            .stack_name(stack)
            .send()
            .await
            .map_err(call_error("DescribeStackEvents"))?;
        Ok(page
            .stack_events()
            .first()
            .and_then(|e| e.event_id().map(str::to_string)))
    }

    /// Creates a change set and waits until CloudFormation has worked out
    /// what it would change.
    pub async fn change_set(
        &self,
        stack: &str,
        name: &str,
        kind: ChangeSetType,
        body: &str,
        parameters: Vec<Parameter>,
        capabilities: Vec<Capability>,
    ) -> Result<ChangeSetOutcome, CallError> {
        let created = self
            .client
            .create_change_set()
            .stack_name(stack)
            .change_set_name(name)
            .change_set_type(kind)
            .template_body(body)
            .set_parameters(Some(parameters))
            .set_capabilities(Some(capabilities))
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Said at once rather than as a failed change set by some
            // implementations (moto) when nothing would change.
            Err(SdkError::ServiceError(service))
                if service
                    .err()
                    .message()
                    .is_some_and(|m| m.contains("No updates are to be performed")) =>
            {
                return Ok(ChangeSetOutcome::NoChanges);
            }
            Err(error) => return Err(call_error("CreateChangeSet")(error)),
        }
        loop {
            let mut changes = Vec::new();
            let mut pages = self
                .client
                .describe_change_set()
                .stack_name(stack)
                .change_set_name(name)
                .into_paginator()
                .send();
            let mut status = None;
            let mut reason = None;
            while let Some(page) = pages.next().await {
                let page = page.map_err(call_error("DescribeChangeSet"))?;
                status = page.status().cloned();
                reason = page.status_reason().map(str::to_string);
                changes.extend(page.changes().iter().filter_map(|c| {
                    let r = c.resource_change()?;
                    Some(ResourceChange {
                        action: r
                            .action()
                            .map(|a| a.as_str().to_string())
                            .unwrap_or_default(),
                        logical_id: r.logical_resource_id().unwrap_or_default().to_string(),
                        resource_type: r.resource_type().unwrap_or_default().to_string(),
                        replacement: r.replacement().map(|x| x.as_str().to_string()),
                    })
                }));
            }
            match status {
                Some(ChangeSetStatus::CreateComplete) => {
                    return Ok(ChangeSetOutcome::Ready(changes));
                }
                Some(ChangeSetStatus::Failed) => {
                    let reason = reason.unwrap_or_default();
                    if reason.contains("didn't contain changes") || reason.contains("No updates") {
                        self.delete_change_set(stack, name).await?;
                        return Ok(ChangeSetOutcome::NoChanges);
                    }
                    return Err(CallError {
                        call: "CreateChangeSet",
                        message: reason,
                    });
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Starts the change set's changes.
    pub async fn execute_change_set(&self, stack: &str, name: &str) -> Result<(), CallError> {
        self.client
            .execute_change_set()
            .stack_name(stack)
            .change_set_name(name)
            .send()
            .await
            .map_err(call_error("ExecuteChangeSet"))?;
        Ok(())
    }

    /// Drops a change set that will not be executed.
    pub async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), CallError> {
        self.client
            .delete_change_set()
            .stack_name(stack)
            .change_set_name(name)
            .send()
            .await
            .map_err(call_error("DeleteChangeSet"))?;
        Ok(())
    }

    /// Starts deleting the stack.
    pub async fn delete(&self, stack: &str) -> Result<(), CallError> {
        self.client
            .delete_stack()
            .stack_name(stack)
            .send()
            .await
            .map_err(call_error("DeleteStack"))?;
        Ok(())
    }

    /// Waits until no operation runs on the stack (by ARN), handing each new
    /// event to `show`; returns the final state and this operation's
    /// events. `after` is the newest event before the operation began.
    pub async fn wait(
        &self,
        stack_id: &str,
        after: Option<String>,
        poll: Duration,
        mut show: impl FnMut(&Event, &StackState),
    ) -> Result<(StackState, Vec<Event>), CallError> {
        let mut seen: Vec<Event> = Vec::new();
        let mut ids = HashSet::new();
        loop {
            let state = self.describe(stack_id).await?.ok_or_else(|| CallError {
                call: "DescribeStacks",
                message: format!("the stack {stack_id} is gone"),
            })?;
            let newest = seen.last().map(|e| e.id.clone()).or_else(|| after.clone());
            for event in self.events(stack_id, newest.as_deref()).await? {
                if ids.insert(event.id.clone()) {
                    show(&event, &state);
                    seen.push(event);
                }
            }
            if !state.in_progress() {
                return Ok((state, seen));
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, logical: &str, status: &str, reason: Option<&str>) -> Event {
        Event {
            id: id.into(),
            time: String::new(),
            logical_id: logical.into(),
            resource_type: "AWS::SQS::Queue".into(),
            status: status.into(),
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn the_failure_reported_is_the_resource_that_failed_for_its_own_reason() {
        let events = [
            event("1", "Stack", "CREATE_IN_PROGRESS", Some("User Initiated")),
            event(
                "2",
                "BandQueue1",
                "CREATE_FAILED",
                Some("Resource creation cancelled"),
            ),
            event(
                "3",
                "BlobBucket",
                "CREATE_FAILED",
                Some("bucket name already taken"),
            ),
            event(
                "4",
                "Stack",
                "ROLLBACK_IN_PROGRESS",
                Some("The following resource(s) failed to create: [BlobBucket]"),
            ),
            event("5", "Stack", "ROLLBACK_COMPLETE", None),
        ];
        let failure = first_failure(&events).map(|e| (e.logical_id.as_str(), e.reason.as_deref()));
        assert_eq!(
            failure,
            Some(("BlobBucket", Some("bucket name already taken")))
        );
        // Only cancellations: the first of them still names a resource.
        assert_eq!(
            first_failure(&events[..2]).map(|e| e.id.as_str()),
            Some("2")
        );
        assert_eq!(first_failure(&events[..1]), None);
    }

    #[test]
    fn stack_states_tell_running_from_done() {
        let state = |status: &str| StackState {
            id: String::new(),
            status: status.into(),
            reason: None,
            parameters: Vec::new(),
            parameter_values: Vec::new(),
            outputs: Vec::new(),
        };
        assert!(state("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS").in_progress());
        assert!(!state("REVIEW_IN_PROGRESS").in_progress());
        assert!(state("CREATE_COMPLETE").succeeded());
        assert!(!state("ROLLBACK_COMPLETE").succeeded());
        assert!(!state("UPDATE_ROLLBACK_COMPLETE").succeeded());
    }
}
