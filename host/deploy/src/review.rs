//! Showing a change set before it runs: every resource with its action and
//! whether it is replaced, and, loudly, each replacement or removal that
//! loses data (the database, the bucket, the queues, the token secrets).

use std::io::{BufRead, Write};

use anyhow::Context;
use taskflow_fs::out;

use super::ResourceChange;

/// Resource types whose replacement or removal loses what they hold, and
/// what is lost.
const HOLDS_DATA: &[(&str, &str)] = &[
    (
        "AWS::RDS::DBInstance",
        "the database: a new, EMPTY database takes its place (the old one leaves a final snapshot)",
    ),
    (
        "AWS::S3::Bucket",
        "the bucket of large payloads, results and plugin bytes",
    ),
    (
        "AWS::SQS::Queue",
        "a queue: the messages waiting in it are lost (hosts send pending tasks again only while they are marked unsent)",
    ),
    (
        "AWS::SecretsManager::Secret",
        "a secret: its value changes, so clients and hosts must read it again",
    ),
];

/// What a change would lose, if it is a replacement or removal of a
/// resource that holds data. `Conditional` replacements count: CloudFormation
/// decides them only while it runs.
pub fn data_loss(change: &ResourceChange) -> Option<&'static str> {
    let (_, what) = HOLDS_DATA
        .iter()
        .find(|(kind, _)| *kind == change.resource_type)?;
    let replaced = change.action == "Modify"
        && matches!(change.replacement.as_deref(), Some("True" | "Conditional"));
    (replaced || change.action == "Remove").then_some(*what)
}

/// Prints the change set, the dangerous changes marked and summed up.
pub fn print_changes(changes: &[ResourceChange]) -> anyhow::Result<()> {
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
        let mark = if data_loss(change).is_some() {
            "!!"
        } else {
            "  "
        };
        out!(
            "{mark}{:<8} {:<28} {:<44} {}",
            change.action,
            change.logical_id,
            change.resource_type,
            change.replacement.as_deref().unwrap_or("-")
        );
    }
    let dangerous: Vec<_> = changes
        .iter()
        .filter_map(|c| Some((c, data_loss(c)?)))
        .collect();
    if !dangerous.is_empty() {
        out!();
        out!("WARNING: this change set replaces or removes resources that hold data:");
        for (change, what) in dangerous {
            let verb = if change.action == "Remove" {
                "removed"
            } else if change.replacement.as_deref() == Some("Conditional") {
                "may be replaced"
            } else {
                "replaced"
            };
            out!(
                "  {} ({}) {verb}: {what}",
                change.logical_id,
                change.resource_type
            );
        }
    }
    Ok(())
}

/// Asks on stdout, reads the answer from stdin: yes only for "y" or "yes";
/// no answer (stdin closed) is no.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
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

    fn change(action: &str, kind: &str, replacement: Option<&str>) -> ResourceChange {
        ResourceChange {
            action: action.into(),
            logical_id: "X".into(),
            resource_type: kind.into(),
            replacement: replacement.map(str::to_string),
        }
    }

    #[test]
    fn replacing_or_removing_what_holds_data_is_flagged_and_nothing_else() {
        let db = "AWS::RDS::DBInstance";
        assert!(
            data_loss(&change("Modify", db, Some("True"))).is_some_and(|w| w.contains("EMPTY"))
        );
        assert!(data_loss(&change("Modify", db, Some("Conditional"))).is_some());
        assert!(data_loss(&change("Remove", "AWS::S3::Bucket", None)).is_some());
        assert!(data_loss(&change("Modify", "AWS::SQS::Queue", Some("True"))).is_some());
        assert_eq!(data_loss(&change("Modify", db, Some("False"))), None);
        assert_eq!(data_loss(&change("Add", db, None)), None);
        assert_eq!(
            data_loss(&change("Modify", "AWS::ECS::Service", Some("True"))),
            None
        );
    }
}
