//! The dashboard at `/ui` over HTTP, as a browser would ask for it (the
//! browser itself drives it in `browser.rs`): sign-in with the API token,
//! refusal of every page, data endpoint and action without it, refusal of
//! actions from another origin or without the form token, the security
//! headers, and untrusted task data shown as text.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;
use taskflow_model::task::TaskStatus;
use taskflow_tests::{Backend, TestHost, as_task, submit, wait_terminal};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const LONG: Duration = Duration::from_secs(60);
const MARKUP: &str = "<script>window.pwned=1</script><b>bold</b>";

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn host() -> TestHost {
    TestHost::start_with(1, true, |config| {
        config.api_token = Some(API_TOKEN.to_owned());
    })
    .await
}

/// The session cookie a login with `token` sets.
async fn login(client: &reqwest::Client, host: &TestHost, token: &str) -> reqwest::Response {
    client
        .post(host.at("/ui/login"))
        .header("origin", host.at(""))
        .form(&[("token", token)])
        .send()
        .await
        .expect("login")
}

/// The typed client with the API token.
fn api_client(host: &TestHost) -> taskflow_client::Client {
    taskflow_client::Client::new(&host.at(""), Some(API_TOKEN.to_owned()))
}

fn session_cookie() -> String {
    format!("{}={}", taskflow_ui::COOKIE, hex_of(API_TOKEN))
}

/// The HTML of a dashboard page, signed in.
async fn signed_in_html(client: &reqwest::Client, host: &TestHost, path: &str) -> String {
    client
        .get(host.at(path))
        .header(COOKIE, session_cookie())
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html")
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_every_page_data_endpoint_and_action_is_refused() {
    let host = host().await;
    let client = browser();
    let task = submit(
        &api_client(&host),
        &as_task(json!({"plugin": "echo", "payload": 1})),
    )
    .await;

    for page in [
        "/ui".to_owned(),
        "/ui/tasks".to_owned(),
        format!("/ui/tasks/{}", task.id),
        "/ui/submit".to_owned(),
        "/ui/plugins".to_owned(),
    ] {
        let response = client.get(host.at(&page)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(response.headers()[LOCATION], "/ui/login", "{page}");
    }
    for data in [
        "/ui/api/overview".to_owned(),
        format!("/ui/tasks/{}/payload.json", task.id),
        format!("/ui/tasks/{}/result.json", task.id),
        format!("/ui/tasks/{}/logs.json", task.id),
    ] {
        let response = client.get(host.at(&data)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{data}");
    }
    let form_token = taskflow_ui::form_token(API_TOKEN);
    for action in [
        format!("/ui/tasks/{}/cancel", task.id),
        format!("/ui/tasks/{}/retry", task.id),
        "/ui/tasks/bulk".to_owned(),
        "/ui/submit".to_owned(),
        "/ui/logout".to_owned(),
        "/ui/plugins/uploaded".to_owned(),
    ] {
        // Even with the right form token: the session is what is missing.
        let response = client
            .post(host.at(&action))
            .header("origin", host.at(""))
            .form(&[
                (taskflow_ui::FORM_TOKEN, form_token.as_str()),
                ("plugin", "echo"),
            ])
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{action}");
    }
    // A wrong token, or a cookie with one, gets nothing either.
    assert_eq!(
        login(&client, &host, "not-the-token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let forged = client
        .get(host.at("/ui/api/overview"))
        .header(
            COOKIE,
            format!("{}={}", taskflow_ui::COOKIE, hex_of("guess")),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sets_an_http_only_same_site_cookie_and_pages_carry_a_strict_csp() {
    let host = host().await;
    let client = browser();
    let response = login(&client, &host, API_TOKEN).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[LOCATION],
        "/ui",
        "the token is never in a URL"
    );
    let cookie = response.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cookie.starts_with(&session_cookie()), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }

    let page = client
        .get(host.at("/ui"))
        .header(COOKIE, session_cookie())
        .send()
        .await
        .expect("overview");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii")
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Overview") && html.contains("id=\"hosts\""),
        "{html}"
    );
    assert!(!html.contains("<script>"), "no inline script: {html}");
    // The overview's data, for its live charts.
    let data: serde_json::Value = client
        .get(host.at("/ui/api/overview"))
        .header(COOKIE, session_cookie())
        .send()
        .await
        .expect("data")
        .json()
        .await
        .expect("json");
    assert_eq!(data["hosts"].as_array().map(Vec::len), Some(1), "{data}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_from_another_origin_or_without_the_form_token_are_refused() {
    let host = host().await;
    let client = browser();
    let spinning = submit(
        &api_client(&host),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "timeout_ms": 60000})),
    )
    .await;
    let cancel = host.at(&format!("/ui/tasks/{}/cancel", spinning.id));
    let form_token = taskflow_ui::form_token(API_TOKEN);
    let post = |origin: Option<&str>, site: Option<&str>, token: Option<&str>| {
        let mut request = client.post(&cancel).header(COOKIE, session_cookie());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        let form: Vec<(&str, &str)> = token
            .map(|t| vec![(taskflow_ui::FORM_TOKEN, t)])
            .unwrap_or_default();
        request.form(&form).send()
    };
    let own = host.at("");
    for (origin, site, token) in [
        (
            Some("https://evil.example"),
            None,
            Some(form_token.as_str()),
        ),
        (None, Some("cross-site"), Some(form_token.as_str())),
        (
            Some(own.as_str()),
            Some("same-site"),
            Some(form_token.as_str()),
        ),
        (Some(own.as_str()), Some("same-origin"), None),
        (Some(own.as_str()), Some("same-origin"), Some("0123")),
    ] {
        let response = post(origin, site, token).await.expect("post");
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "origin {origin:?}, sec-fetch-site {site:?}, token {token:?}"
        );
    }
    let view = api_client(&host)
        .get(&spinning.id.to_string())
        .await
        .expect("get");
    assert!(
        !view.task.status.is_terminal(),
        "nothing was cancelled: {view:?}"
    );

    // From the dashboard itself, with its form token: cancelled.
    let response = post(
        Some(own.as_str()),
        Some("same-origin"),
        Some(form_token.as_str()),
    )
    .await
    .expect("post");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let done = wait_terminal(&api_client(&host), spinning.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Cancelled);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_log_lines_and_errors_are_shown_as_text() {
    let host = host().await;
    let client = browser();
    let task = submit(
        &api_client(&host),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": MARKUP}, "max_attempts": 1})),
    )
    .await;
    let done = wait_terminal(&api_client(&host), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Failed);
    let logged = &done.task.history[0].logs;
    assert!(
        logged.iter().any(|line| line.message.contains(MARKUP)),
        "the plugin logged the markup: {logged:?}"
    );
    assert!(
        done.task
            .last_error
            .as_ref()
            .is_some_and(|e| e.message.contains(MARKUP))
    );

    for page in [format!("/ui/tasks/{}", task.id), "/ui/tasks".to_owned()] {
        let html = signed_in_html(&client, &host, &page).await;
        assert!(
            !html.contains("<script>window.pwned"),
            "{page} lets markup through: {html}"
        );
        assert!(!html.contains("<b>bold"), "{page}: {html}");
    }
    let html = signed_in_html(&client, &host, &format!("/ui/tasks/{}", task.id)).await;
    // Payload, log line and error message each show the markup as text.
    let escaped = "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;";
    assert!(
        html.matches(escaped).count() >= 3,
        "payload, log line and error each show the markup escaped: {html}"
    );
    host.stop().await;
}

/// A running attempt's page shows the lines logged so far, and past the
/// record's 200 lines the newest ones; a log longer than the record keeps
/// shows its first lines once the attempt ended and links to the whole log
/// (in S3), which downloads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_page_shows_lines_as_they_are_logged_and_links_to_a_whole_log() {
    let host = TestHost::start_on_with(Backend::Sqs, 1, true, |config| {
        config.api_token = Some(API_TOKEN.to_owned());
    })
    .await;
    let client = browser();
    let api = api_client(&host);
    let running = submit(
        &api,
        &as_task(
            json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 3000, "millis": 30}}),
        ),
    )
    .await;
    // The page reloads itself while the task runs; here, asked again.
    let page_of = |done: fn(&str) -> bool| {
        let (client, host) = (&client, &host);
        async move {
            let mut page = String::new();
            for _ in 0..600 {
                page = signed_in_html(client, host, &format!("/ui/tasks/{}", running.id)).await;
                if done(&page) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            page
        }
    };
    let page = page_of(|page| page.contains("line 2 of 3000")).await;
    assert!(
        page.contains("line 1 of 3000")
            && page.contains("line 2 of 3000")
            && page.contains("so far"),
        "{page}"
    );
    let page = page_of(|page| page.contains(" earlier")).await;
    assert!(
        page.contains("200 lines, the newest, after ")
            && !page.contains("line 1 of 3000")
            && page.contains("The newest lines are shown while the attempt runs"),
        "{page}"
    );
    api.cancel(&running.id.to_string()).await.expect("cancel");

    let long = submit(
        &api,
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 300}})),
    )
    .await;
    let done = wait_terminal(&api, long.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed);
    let page = signed_in_html(&client, &host, &format!("/ui/tasks/{}", long.id)).await;
    let link = format!("/ui/tasks/{}/logs.json", long.id);
    assert!(
        page.contains("line 200 of 300")
            && !page.contains("line 201 of 300")
            && page.contains("100 more in the whole log")
            && page.contains(&link),
        "{page}"
    );
    let whole = client
        .get(host.at(&link))
        .header(COOKIE, session_cookie())
        .send()
        .await
        .expect("whole log");
    assert_eq!(whole.status(), StatusCode::OK);
    let whole: serde_json::Value = whole.json().await.expect("JSON");
    let lines = whole["history"][0]["logs"].as_array().map_or(0, Vec::len);
    assert_eq!(lines, 300, "{whole}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_list_filters_and_the_plugins_page_counts_each_version() {
    let host = host().await;
    let client = browser();
    let api = api_client(&host);
    let high = submit(
        &api,
        &as_task(json!({"plugin": "echo", "payload": 1, "priority": 2})),
    )
    .await;
    let keyed = submit(
        &api,
        &as_task(
            json!({"plugin": "echo", "payload": 2, "priority": 3, "idempotency_key": "order-77"}),
        ),
    )
    .await;
    let failing = submit(
        &api,
        &as_task(
            json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 2}, "max_attempts": 1}),
        ),
    )
    .await;
    for id in [high.id, keyed.id, failing.id] {
        wait_terminal(&api, id, LONG).await;
    }

    let listed = |html: &str| {
        [high.id, keyed.id, failing.id].map(|id| html.contains(&format!("/ui/tasks/{id}\"")))
    };
    for (query, expected) in [
        ("priority=2", [true, false, false]),
        ("idempotency_key=order-77", [false, true, false]),
        ("error_kind=retryable", [false, false, true]),
        (
            "plugin=echo&from=2000-01-01T00%3A00&to=2100-01-01",
            [true, true, false],
        ),
        ("from=2100-01-01T00%3A00", [false, false, false]),
    ] {
        let html = signed_in_html(&client, &host, &format!("/ui/tasks?{query}")).await;
        assert_eq!(listed(&html), expected, "{query}");
    }
    let refused = client
        .get(host.at("/ui/tasks?from=yesterday"))
        .header(COOKIE, session_cookie())
        .send()
        .await
        .expect("page");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    // The plugins page adds up each version's attempts: flaky's one failed.
    let html = signed_in_html(&client, &host, "/ui/plugins").await;
    let row = |plugin: &str| {
        let start = html
            .find(&format!("data-plugin=\"{plugin}\""))
            .unwrap_or_else(|| panic!("no row of {plugin}: {html}"));
        let end = html[start..]
            .find("</tr>")
            .map_or(html.len(), |end| start + end);
        html[start..end].to_owned()
    };
    let flaky = row("flaky");
    assert!(flaky.contains("<td class=\"attempts\">1</td>"), "{flaky}");
    assert!(flaky.contains("1 (100.0%)"), "{flaky}");
    let echo = row("echo");
    assert!(echo.contains("<td class=\"attempts\">2</td>"), "{echo}");
    assert!(echo.contains(" ms"), "echo's load time: {echo}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_a_plugin_takes_a_session_with_the_admin_token() {
    const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
    let host = TestHost::start_with(1, false, |config| {
        config.api_token = Some(API_TOKEN.to_owned());
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
    })
    .await;
    let client = browser();
    let wasm = taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm("echo"));
    let upload = |token: &'static str| {
        client
            .post(host.at("/ui/plugins/uploaded"))
            .header(COOKIE, format!("{}={}", taskflow_ui::COOKIE, hex_of(token)))
            .header("sec-fetch-site", "same-origin")
            .header("x-form-token", taskflow_ui::form_token(token))
            .body(wasm.clone())
            .send()
    };
    let refused = upload(API_TOKEN).await.expect("upload");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let html = signed_in_html(&client, &host, "/ui/plugins").await;
    assert!(html.contains("needs the admin token"), "{html}");

    let loaded = upload(ADMIN_TOKEN).await.expect("upload");
    assert_eq!(loaded.status(), StatusCode::OK);
    let info: serde_json::Value = loaded.json().await.expect("json");
    assert_eq!(info["name"], "uploaded");
    let names: Vec<String> = api_client(&host)
        .plugins()
        .await
        .expect("plugins")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&"uploaded".to_owned()), "{names:?}");
    host.stop().await;
}
