//! `taskflow deploy` against moto's CloudFormation, with the template's
//! self-managed parameter set: the account and region are said first; the
//! change set is shown and nothing happens when the answer is no; answered
//! yes, it creates the queues and the bucket and writes `.env` beside the
//! lines it does not own; a `taskflow serve` started from that `.env` (plus
//! a PostgreSQL URL) takes a task through SQS and S3 to completed; an update
//! with `--yes` still shows its change set; a deploy with nothing changed
//! changes nothing; `--wait` finds nothing under way; `--delete` removes the
//! stack and its settings. A deploy interrupted with Ctrl-C while its stack
//! is being created says how to follow it again, and `--wait` does.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use taskflow_tests::process::{HostProcess, free_port};
use taskflow_tests::{aws, install_plugins, pg, poll_json, taskflow_binary};

/// Runs `taskflow deploy <args>` in `dir`, answering `answer` when asked.
fn deploy(dir: &Path, args: &[&str], answer: &str) -> (bool, String) {
    deploy_without(dir, args, answer, &[], &[])
}

/// Like [`deploy`], without the environment variables `removed` and with
/// `added` (at most 5 minutes, as every child of these tests is bounded).
fn deploy_without(
    dir: &Path,
    args: &[&str],
    answer: &str,
    removed: &[&str],
    added: &[(&str, &str)],
) -> (bool, String) {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", "300"])
        .arg(taskflow_binary())
        .current_dir(dir)
        .arg("deploy")
        .args(args)
        .envs(added.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in removed {
        command.env_remove(name);
    }
    let mut child = command.spawn().expect("run taskflow deploy");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(answer.as_bytes())
        .expect("answer");
    let output = child.wait_with_output().expect("taskflow deploy ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The variables of an env file, as `taskflow` reads them.
fn env_of(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read the env file");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

async fn queue_names(prefix: &str) -> Vec<String> {
    let listed = aws::sqs()
        .await
        .list_queues()
        .queue_name_prefix(prefix)
        .send()
        .await
        .expect("list queues");
    let mut names: Vec<String> = listed
        .queue_urls()
        .iter()
        .filter_map(|url| url.rsplit('/').next().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn deploy_creates_the_stack_writes_env_and_a_host_started_from_it_completes_a_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join(".env");
    let stack = aws::fresh_prefix();
    let (schema, _) = pg::fresh_schema().await;
    let database_url = pg::schema_url(&schema);
    let before = format!("# mine\nTASKFLOW_DATABASE_URL={database_url}\nMY_OWN_SETTING=kept\n");
    std::fs::write(&env_file, &before).expect("write .env");
    let self_managed = [
        "--stack-name",
        stack.as_str(),
        "--parameter",
        "Hosts=SelfManaged",
    ];

    // Asked, and answered no: the account and region were said first, the
    // change set was shown, nothing exists.
    let (ok, out) = deploy(dir.path(), &self_managed, "n\n");
    assert!(ok, "declining is not an error:\n{out}");
    let account = out.find("Account  123456789012 as arn:aws:");
    let region = out.find("Region   us-east-1 from AWS_REGION");
    let change_set = out.find("Change set");
    assert!(
        account.is_some() && region.is_some() && account < change_set && region < change_set,
        "the account (moto's) and the region, with where it came from, come before anything else:\n{out}"
    );
    for shown in [
        "Change set",
        "BandQueue1",
        "AWS::SQS::Queue",
        "BlobBucket",
        "Apply these changes",
    ] {
        assert!(out.contains(shown), "the change set shows {shown}:\n{out}");
    }
    assert!(out.contains("Nothing was changed"), "{out}");
    assert!(
        queue_names(&stack).await.is_empty(),
        "no queue before the answer yes"
    );
    let stacks = taskflow_deploy::Stacks::new(&aws::sdk().await);
    assert!(
        stacks.describe(&stack).await.expect("describe").is_none(),
        "the review left no stack behind"
    );
    assert_eq!(std::fs::read_to_string(&env_file).expect(".env"), before);

    // Asked again, and answered yes: created through the change set shown,
    // and .env written.
    let (ok, out) = deploy(dir.path(), &self_managed, "y\n");
    assert!(ok, "deploy answered yes:\n{out}");
    for shown in [
        "Change set",
        "BandQueue1",
        "Apply these changes",
        "CREATE_COMPLETE",
    ] {
        assert!(out.contains(shown), "the create shows {shown}:\n{out}");
    }
    assert!(
        !out.contains("WARNING"),
        "creating replaces nothing that holds data:\n{out}"
    );
    assert!(
        out.contains("start hosts with `taskflow serve`"),
        "the next steps of a self-managed stack are said:\n{out}"
    );
    assert_eq!(
        queue_names(&stack).await,
        [
            format!("{stack}-band-1"),
            format!("{stack}-band-2"),
            format!("{stack}-band-3"),
            format!("{stack}-dead-letters")
        ]
    );
    let env = env_of(&env_file);
    assert_eq!(env["TASKFLOW_QUEUE"], "sqs");
    assert_eq!(env["TASKFLOW_BLOBS"], "s3");
    assert_eq!(env["TASKFLOW_STORAGE"], "postgres");
    assert_eq!(env["TASKFLOW_SQS_QUEUE_PREFIX"], stack);
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(
        env["TASKFLOW_DATABASE_URL"], database_url,
        "a setting deploy does not write stays"
    );
    assert_eq!(env["MY_OWN_SETTING"], "kept");
    let bucket = env["TASKFLOW_S3_BUCKET"].clone();
    aws::s3()
        .await
        .head_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the stack's bucket {bucket} exists: {e:?}"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".env.bak")).expect("backup"),
        before,
        "the previous .env is kept"
    );

    // A host started in that directory with nothing but its data directory
    // (and credentials): the rest comes from .env.
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo"]);
    let mut serve = Command::new(taskflow_binary());
    serve
        .current_dir(dir.path())
        .args([
            "serve",
            "--log-format",
            "json",
            "--workers",
            "2",
            "--data-dir",
        ])
        .arg(data.path())
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION");
    let host = HostProcess::launch(serve, free_port()).await;
    let client = reqwest::Client::new();
    let big = "x".repeat(100 * 1024);
    let submitted: serde_json::Value = client
        .post(format!("{}/tasks", host.url))
        .json(&json!({"plugin": "echo", "payload": {"text": big}, "priority": 2}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = submitted["id"].as_str().expect("task id").to_string();
    let done = poll_json(
        &client,
        &format!("{}/tasks/{id}", host.url),
        Duration::from_secs(60),
        |task| task["status"] == "completed",
    )
    .await;
    assert_eq!(
        done["result"]["value"]["text"].as_str().map(str::len),
        Some(big.len())
    );
    let stored = aws::keys(&bucket, "").await;
    assert!(
        stored.iter().any(|k| k.starts_with("payloads/"))
            && stored.iter().any(|k| k.starts_with("results/")),
        "the large payload and result went through the stack's bucket: {stored:?}"
    );
    drop(host);

    // An update with --yes: the change set is still made and shown, only
    // the question is skipped. The region now comes from .env (no
    // AWS_REGION in the environment), and deploy says so.
    let (ok, out) = deploy_without(
        dir.path(),
        &[
            "--stack-name",
            stack.as_str(),
            "--parameter",
            "LeaseSecs=45",
            "--yes",
        ],
        "",
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
        &[],
    );
    assert!(ok, "deploy --yes of a new parameter:\n{out}");
    assert!(
        out.contains("Region   us-east-1 from .env (written by an earlier deploy"),
        "a region read from .env is said to come from there:\n{out}"
    );
    // The band queues' visibility timeout is the lease.
    for shown in ["Change set", "Modify", "BandQueue1", "UPDATE_COMPLETE"] {
        assert!(out.contains(shown), "the update shows {shown}:\n{out}");
    }
    assert!(
        !out.contains("Apply these changes"),
        "--yes does not ask:\n{out}"
    );
    assert_eq!(env_of(&env_file)["TASKFLOW_LEASE_SECS"], "45");

    // Again, with nothing changed: up to date, .env as it was.
    let written = std::fs::read_to_string(&env_file).expect(".env");
    let (ok, out) = deploy(dir.path(), &["--stack-name", stack.as_str(), "--yes"], "");
    assert!(ok, "a second deploy:\n{out}");
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(std::fs::read_to_string(&env_file).expect(".env"), written);

    // --wait with nothing under way says so (moto finishes every operation
    // before it answers, so it never has one under way to follow).
    let (ok, out) = deploy(dir.path(), &["--stack-name", stack.as_str(), "--wait"], "");
    assert!(ok, "deploy --wait:\n{out}");
    assert!(
        out.contains(&format!(
            "Nothing is under way on stack {stack}: it is UPDATE_COMPLETE"
        )),
        "{out}"
    );

    // --delete: the queues go, and so do the settings deploy wrote.
    let (ok, out) = deploy(
        dir.path(),
        &["--stack-name", stack.as_str(), "--delete", "--yes"],
        "",
    );
    assert!(ok, "deploy --delete:\n{out}");
    assert!(out.contains("DELETE_COMPLETE"), "{out}");
    assert!(
        queue_names(&stack).await.is_empty(),
        "the queues are deleted"
    );
    let env = env_of(&env_file);
    assert!(
        !env.contains_key("TASKFLOW_QUEUE") && !env.contains_key("TASKFLOW_S3_BUCKET"),
        "{env:?}"
    );
    assert_eq!(env["MY_OWN_SETTING"], "kept");
    assert_eq!(env["TASKFLOW_DATABASE_URL"], database_url);
    pg::drop_schema(&schema).await;
}

#[tokio::test]
async fn a_deploy_interrupted_while_the_stack_is_created_is_followed_again_with_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    // tests/support/moto_server.py reports a stack whose name ends in -slow
    // as still being created for 8 s after its change set is executed.
    let stack = format!("{}-slow", aws::fresh_prefix());
    let mut child = Command::new("timeout")
        .args(["--kill-after=10", "300"])
        .arg(taskflow_binary())
        .current_dir(dir.path())
        .args(["deploy", "--stack-name", stack.as_str()])
        .args(["--parameter", "Hosts=SelfManaged", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taskflow deploy");
    // Read its output as it comes, until the create is seen under way.
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut shown = String::new();
    loop {
        let Ok(line) = seen.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            let output = child.wait_with_output().expect("taskflow deploy ends");
            panic!(
                "the create was never seen under way:\n{shown}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        shown.push_str(&line);
        shown.push('\n');
        if line.contains("CREATE_IN_PROGRESS") && line.contains("AWS::CloudFormation::Stack") {
            break;
        }
    }
    // Ctrl-C (timeout hands SIGINT on to deploy).
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success(), "kill -INT");
    let output = child.wait_with_output().expect("taskflow deploy ends");
    reader.join().expect("the reader ends");
    shown.extend(seen.try_iter().map(|line| line + "\n"));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an interrupted deploy fails:\n{shown}{said}"
    );
    assert!(
        said.contains(&format!(
            "interrupted: CloudFormation goes on with the create of stack {stack}; `taskflow deploy --wait --stack-name {stack}` follows it again"
        )),
        "Ctrl-C says the create goes on and how to follow it:\n{shown}{said}"
    );
    assert!(
        !shown.contains("Stack create:") && !dir.path().join(".env").exists(),
        "it stopped before the end:\n{shown}{said}"
    );
    let stacks = taskflow_deploy::Stacks::new(&aws::sdk().await);
    let state = stacks
        .describe(&stack)
        .await
        .expect("describe")
        .expect("the stack");
    assert_eq!(state.status, "CREATE_IN_PROGRESS", "the create goes on");

    // --wait follows it to the end and writes the settings.
    let (ok, out) = deploy(dir.path(), &["--stack-name", stack.as_str(), "--wait"], "");
    assert!(ok, "deploy --wait:\n{out}");
    let following = out.find(&format!(
        "Following the create under way on stack {stack} (CREATE_IN_PROGRESS)"
    ));
    let done = out.find("Stack create: CREATE_COMPLETE");
    assert!(
        following.is_some() && following < done,
        "--wait follows the create until it completes:\n{out}"
    );
    assert_eq!(
        env_of(&dir.path().join(".env"))["TASKFLOW_SQS_QUEUE_PREFIX"],
        stack
    );

    let (ok, out) = deploy(
        dir.path(),
        &["--stack-name", stack.as_str(), "--delete", "--yes"],
        "",
    );
    assert!(ok && out.contains("DELETE_COMPLETE"), "{out}");
}

#[tokio::test]
async fn deploy_refuses_what_it_cannot_do_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = aws::fresh_prefix();
    // A template CloudFormation cannot read.
    std::fs::write(dir.path().join("broken.yaml"), "Resources: [1, 2").expect("write");
    let (ok, out) = deploy(
        dir.path(),
        &["--stack-name", &stack, "--template", "broken.yaml", "--yes"],
        "",
    );
    assert!(!ok && out.contains("the template is not valid"), "{out}");
    // A template file that is not there.
    let (ok, out) = deploy(
        dir.path(),
        &["--stack-name", &stack, "--template", "missing.yaml"],
        "",
    );
    assert!(
        !ok && out.contains("cannot read the template missing.yaml"),
        "{out}"
    );
    // A parameter the template does not declare: refused, naming those it
    // does, and nothing is created.
    let (ok, out) = deploy(
        dir.path(),
        &[
            "--stack-name",
            &stack,
            "--parameter",
            "LeaseSeconds=45",
            "--yes",
        ],
        "",
    );
    assert!(
        !ok && out
            .contains("the template has no parameter LeaseSeconds; its parameters are Hosts,")
            && out.contains("LeaseSecs"),
        "{out}"
    );
    assert!(
        taskflow_deploy::Stacks::new(&aws::sdk().await)
            .describe(&stack)
            .await
            .expect("describe")
            .is_none(),
        "nothing was created"
    );
    // A name CloudFormation would refuse, said before anything is asked.
    let (ok, out) = deploy(dir.path(), &["--stack-name", "task_flow", "--yes"], "");
    assert!(
        !ok && out.contains("\"task_flow\" is not a stack name") && !out.contains("Account"),
        "{out}"
    );
    // Deleting a stack that does not exist changes nothing.
    let (ok, out) = deploy(
        dir.path(),
        &["--stack-name", &stack, "--delete", "--yes"],
        "",
    );
    assert!(ok && out.contains("nothing to delete"), "{out}");
    // --wait on a stack that does not exist.
    let (ok, out) = deploy(dir.path(), &["--stack-name", &stack, "--wait"], "");
    assert!(
        !ok && out.contains(&format!(
            "there is no stack {stack} in us-east-1 to wait for"
        )),
        "{out}"
    );
    // No credentials anywhere (and no instance metadata to ask): said as
    // such, before any CloudFormation call.
    let home = tempfile::tempdir().expect("tempdir");
    let home_dir = home.path().to_string_lossy().into_owned();
    let (ok, out) = deploy_without(
        dir.path(),
        &["--stack-name", &stack],
        "",
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ],
        &[
            ("HOME", home_dir.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ],
    );
    assert!(
        !ok && out.contains("no AWS credentials were found"),
        "{out}"
    );
    assert!(!out.contains("CloudFormation"), "{out}");
    // No region anywhere.
    let (ok, out) = deploy_without(
        dir.path(),
        &["--stack-name", &stack],
        "",
        &["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"],
        &[
            ("HOME", home_dir.as_str()),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
        ],
    );
    assert!(
        !ok && out.contains("no AWS region: set AWS_REGION"),
        "{out}"
    );
    // An env file named but missing is refused before anything runs.
    let (ok, out) = deploy(
        dir.path(),
        &["--env-file", "nope.env", "--stack-name", &stack],
        "",
    );
    assert!(
        !ok && out.contains("the env file nope.env does not exist"),
        "{out}"
    );
}

/// Every setting `deploy` writes from a stack's outputs is one that
/// `taskflow serve` (or the CLI, or the AWS SDK) reads.
#[test]
fn every_setting_deploy_writes_is_read_by_serve() {
    let outputs: Vec<(String, String)> = [
        ("SqsQueuePrefix", "prod"),
        ("S3Bucket", "prod-blobs"),
        ("Region", "eu-west-1"),
        ("DatabaseUrl", "postgres://taskflow@db:5432/taskflow"),
        ("ApiUrl", "https://taskflow.example"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings =
        taskflow_deploy::settings_from_outputs(&outputs).expect("all required outputs are there");
    let serve = <taskflow_server::config::ServeConfig as clap::Args>::augment_args(
        clap::Command::new("serve"),
    );
    let read: Vec<String> = serve
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .chain([
            "TASKFLOW_SERVER".into(),
            "TASKFLOW_TOKEN_SECRET".into(),
            "TASKFLOW_ADMIN_TOKEN_SECRET".into(),
            "AWS_REGION".into(),
            "AWS_ENDPOINT_URL".into(),
        ])
        .collect();
    assert!(settings.len() >= 7, "{settings:?}");
    for key in settings.keys() {
        assert!(read.contains(key), "{key} is read by nobody");
    }
}
