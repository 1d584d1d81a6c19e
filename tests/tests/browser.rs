//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, driven over WebDriver by fantoccini) against two
//! hosts sharing PostgreSQL behind `taskflow lb`, with an API token. It
//! signs in, sees both hosts, submits a task from the form and follows it
//! to completed, reads the plugin's log line, cancels a long task, retries a
//! failed one and reads its second attempt's lines, and checks that markup
//! in a payload, a log line and an error is shown as text and never runs.
//! A screenshot of each page is saved under the test's output directory
//! (`target/tmp/browser/`). Without Chromium or its driver it fails; it
//! never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use taskflow_model::task::{TaskId, TaskStatus};
use taskflow_tests::process::{HostProcess, free_port};
use taskflow_tests::{
    as_task, install_plugins, pg, poll_json, submit, taskflow_binary, wait_terminal,
};

const API_TOKEN: &str = "browser-test-token-0123456789";
const LONG: Duration = Duration::from_secs(60);
const MARKUP: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

/// A child process killed when dropped; started under `timeout`, so it
/// cannot outlive a stuck test by more than ten minutes either.
struct Process(Child);

impl Process {
    fn spawn(program: &str, args: &[&str]) -> Self {
        let child = Command::new("timeout")
            .args(["--kill-after=10", "600", program])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Self(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to the program (a SIGKILL
        // would stop `timeout` alone and leave the program running).
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Debian's chromedriver and Chromium; the test fails without them.
fn chromium_paths() -> (PathBuf, PathBuf) {
    let driver = PathBuf::from("/usr/bin/chromedriver");
    let browser = PathBuf::from("/usr/bin/chromium");
    assert!(
        driver.exists() && browser.exists(),
        "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; tests/run.sh installs them)"
    );
    (driver, browser)
}

/// A headless Chromium session through a chromedriver of our own.
async fn browser(driver_port: u16, browser: &Path, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": browser,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{driver_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            // chromedriver may not listen yet.
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
        }
    }
}

/// Saves a screenshot of the current page as `name`.png.
async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(format!("{name}.png"));
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

/// Waits until `check` holds for the page's body text, reloading it (the
/// task page reloads itself while the task runs; the others are asked again).
async fn until_text(client: &Client, what: &str, check: impl Fn(&str) -> bool) -> String {
    until_page(client, what, true, check).await
}

/// Waits until `check` holds for the page's body text; with `reload`,
/// reloading it between looks (else the page's script changes it).
async fn until_page(
    client: &Client,
    what: &str,
    reload: bool,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        // Read in one script call: a page that reloads itself (the task page
        // while its task runs) would leave a found element stale, and a look
        // made mid-navigation fails; both are looked at again.
        let text = match client
            .execute(
                "return document.body ? document.body.innerText : '';",
                Vec::new(),
            )
            .await
        {
            Ok(Value::String(text)) => text,
            Ok(_) | Err(_) => String::new(),
        };
        if check(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited a minute for {what}; the page says:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        if reload {
            // A failed reload (mid-navigation) is looked at again.
            let _ = client.refresh().await;
        }
    }
}

/// Clicks the element `locator` finds, finding it again if the page
/// reloaded itself between the find and the click.
async fn click(client: &Client, locator: Locator<'_>, what: &str) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let outcome = match client.find(locator).await {
            Ok(element) => element.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() >= deadline => panic!("cannot click {what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn open_task(client: &Client, lb: &str, id: TaskId) {
    client
        .goto(&format!("{lb}/ui/tasks/{id}"))
        .await
        .expect("task page");
}

/// Whether a script of the page ran the markup's `window.pwned = …`.
async fn pwned(client: &Client) -> bool {
    client
        .execute("return window.pwned !== undefined;", Vec::new())
        .await
        .expect("execute")
        == Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_browser_through_the_load_balancer() {
    let (driver_path, browser_path) = chromium_paths();
    let (schema, _) = pg::fresh_schema().await;
    let database = pg::schema_url(&schema);
    let data: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut hosts = Vec::new();
    for (dir, name) in data.iter().zip(["browser-host-a", "browser-host-b"]) {
        install_plugins(&dir.path().join("plugins"), &["flaky"]);
        std::fs::copy(
            taskflow_tests::fixture_wasm("hostile"),
            dir.path().join("plugins/hostile.wasm"),
        )
        .expect("copy fixture");
        hosts.push(
            HostProcess::start_shared(
                dir.path(),
                &database,
                "postgres",
                &[
                    "--host-id",
                    name,
                    "--workers",
                    "1",
                    "--api-token",
                    API_TOKEN,
                ],
            )
            .await,
        );
    }
    let lb_port = free_port();
    let lb_args = [
        "lb".to_owned(),
        "--listen".into(),
        format!("127.0.0.1:{lb_port}"),
        "--backend".into(),
        hosts[0].url.clone(),
        "--backend".into(),
        hosts[1].url.clone(),
    ];
    let lb_args: Vec<&str> = lb_args.iter().map(String::as_str).collect();
    let _lb = Process::spawn(taskflow_binary().to_str().expect("utf-8 path"), &lb_args);
    let lb = format!("http://127.0.0.1:{lb_port}");
    poll_json(
        &reqwest::Client::new(),
        &format!("{lb}/health"),
        LONG,
        |b| b["status"] == "ok",
    )
    .await;
    let api = taskflow_client::Client::new(&lb, Some(API_TOKEN.to_owned()));

    let driver_port = free_port();
    let _driver = Process::spawn(
        driver_path.to_str().expect("utf-8 path"),
        &[&format!("--port={driver_port}")],
    );
    let profile = tempfile::tempdir().expect("browser profile");
    let client = browser(driver_port, &browser_path, profile.path()).await;

    // Sign in: the dashboard asks for the token first.
    client.goto(&format!("{lb}/ui")).await.expect("open /ui");
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/ui/login")
    );
    screenshot(&client, "login").await;
    client
        .find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(API_TOKEN)
        .await
        .expect("type token");
    client
        .find(Locator::Css("form button[type=submit]"))
        .await
        .expect("sign in button")
        .click()
        .await
        .expect("sign in");

    // The overview shows both hosts of the fleet (they report every 5 s).
    until_text(&client, "both hosts on the overview", |text| {
        text.contains("browser-host-a") && text.contains("browser-host-b")
    })
    .await;
    assert!(
        !client
            .current_url()
            .await
            .expect("url")
            .as_str()
            .contains(API_TOKEN)
    );
    screenshot(&client, "overview").await;

    // Submit from the form, follow the task to completed, read its log line.
    client
        .goto(&format!("{lb}/ui/submit"))
        .await
        .expect("submit page");
    client
        .find(Locator::Id("plugin"))
        .await
        .expect("plugin picker")
        .select_by_value("flaky")
        .await
        .expect("pick flaky");
    let payload = client
        .find(Locator::Id("payload"))
        .await
        .expect("payload editor");
    payload.clear().await.expect("clear");
    payload
        .send_keys("{\"succeed_on_attempt\": 1")
        .await
        .expect("type");
    // Not JSON yet: the editor says so before anything is sent.
    let problem = client
        .find(Locator::Id("payload-problem"))
        .await
        .expect("problem line")
        .text()
        .await
        .expect("text");
    assert!(problem.contains("Not valid JSON"), "{problem:?}");
    payload.send_keys("}").await.expect("type");
    screenshot(&client, "submit").await;
    client
        .find(Locator::Css("form#submit button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    let text = until_text(&client, "the submitted task completed", |text| {
        text.contains("completed") && text.contains("attempt 1, set to succeed on attempt 1")
    })
    .await;
    assert!(text.contains("flaky stdout of attempt 1"), "{text}");
    screenshot(&client, "task-completed").await;

    // Cancel a long task from its page.
    let long = submit(
        &api,
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "timeout_ms": 60000})),
    )
    .await;
    open_task(&client, &lb, long.id).await;
    until_text(&client, "the long task running", |text| {
        text.contains("running")
    })
    .await;
    click(&client, Locator::Id("cancel"), "the cancel button").await;
    until_text(&client, "the long task cancelled", |text| {
        text.contains("cancelled")
    })
    .await;
    assert_eq!(
        wait_terminal(&api, long.id, LONG).await.task.status,
        TaskStatus::Cancelled
    );
    screenshot(&client, "task-cancelled").await;

    // Retry a failed task: its second attempt runs with its own log lines.
    let failing = submit(
        &api,
        &as_task(
            json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 2}, "max_attempts": 1}),
        ),
    )
    .await;
    assert_eq!(
        wait_terminal(&api, failing.id, LONG).await.task.status,
        TaskStatus::Failed
    );
    open_task(&client, &lb, failing.id).await;
    click(&client, Locator::Id("retry"), "the retry button").await;
    let text = until_text(&client, "the retried task completed", |text| {
        text.contains("Logs of attempt 2")
            && text.contains("attempt 2, set to succeed on attempt 2")
    })
    .await;
    assert!(
        text.contains("Logs of attempt 1") && text.contains("retryable"),
        "{text}"
    );
    let attempts = client
        .find_all(Locator::Css("#attempts tr[data-attempt]"))
        .await
        .expect("attempt rows");
    assert_eq!(attempts.len(), 2);
    screenshot(&client, "task-retried").await;

    // Markup in a payload, a log line and an error: shown as text, never run.
    let hostile = submit(
        &api,
        &as_task(json!({"plugin": "hostile", "payload": {"mode": MARKUP}, "max_attempts": 1})),
    )
    .await;
    wait_terminal(&api, hostile.id, LONG).await;
    open_task(&client, &lb, hostile.id).await;
    for (section, what) in [
        ("#payload pre", "payload"),
        ("details.logs td.message", "log line"),
        ("#last-error .message", "error message"),
    ] {
        let shown = client
            .find(Locator::Css(section))
            .await
            .unwrap_or_else(|e| panic!("no {what} on the page: {e}"))
            .text()
            .await
            .expect("text");
        assert!(
            shown.contains("<script>window.pwned=1</script>"),
            "{what}: {shown:?}"
        );
    }
    assert!(!pwned(&client).await, "markup ran on the task page");
    screenshot(&client, "task-markup").await;
    client
        .goto(&format!("{lb}/ui/tasks"))
        .await
        .expect("task list");
    assert!(!pwned(&client).await, "markup ran on the task list");
    screenshot(&client, "tasks").await;

    // Upload a plugin from the plugins page; every host loads it.
    client
        .goto(&format!("{lb}/ui/plugins"))
        .await
        .expect("plugins");
    client
        .find(Locator::Id("upload-name"))
        .await
        .expect("name field")
        .send_keys("uploaded")
        .await
        .expect("type name");
    let echo = taskflow_tests::plugin_wasm("echo");
    client
        .find(Locator::Id("upload-file"))
        .await
        .expect("file field")
        .send_keys(echo.to_str().expect("utf-8 path"))
        .await
        .expect("choose file");
    client
        .find(Locator::Css("form#upload button[type=submit]"))
        .await
        .expect("upload button")
        .click()
        .await
        .expect("upload");
    until_page(&client, "the upload's answer", false, |text| {
        text.contains("Loaded uploaded")
    })
    .await;
    for host in &hosts {
        let on_host = taskflow_client::Client::new(&host.url, Some(API_TOKEN.to_owned()));
        let deadline = std::time::Instant::now() + LONG;
        while !on_host
            .plugins()
            .await
            .is_ok_and(|plugins| plugins.iter().any(|p| p.name == "uploaded"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not load the uploaded plugin",
                host.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    client
        .goto(&format!("{lb}/ui/plugins"))
        .await
        .expect("plugins");
    screenshot(&client, "plugins").await;

    client.close().await.expect("close the browser");
    drop(hosts);
    pg::drop_schema(&schema).await;
}
