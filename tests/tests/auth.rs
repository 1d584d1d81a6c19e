//! Bearer-token authentication end to end: which token each endpoint takes,
//! how the `Authorization` header may be written, and that the OpenAPI
//! description declares exactly the authentication the host enforces.
//!
//! (Plugin upload and removal taking only the admin token is in `api.rs`.)

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use serde_json::Value;
use taskflow_tests::TestHost;

const API_TOKEN: &str = "api-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

async fn host(api_token: Option<&str>, admin_token: Option<&str>) -> TestHost {
    TestHost::start_with(1, false, |config| {
        config.api_token = api_token.map(str::to_owned);
        config.admin_token = admin_token.map(str::to_owned);
    })
    .await
}

/// `method` (any case) `path` with `authorization` (if any) as the header's value.
async fn call(
    client: &reqwest::Client,
    host: &TestHost,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = client.request(method, host.at(path));
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    request.send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_take_the_admin_token_not_the_api_token() {
    let host = host(Some(API_TOKEN), Some(ADMIN_TOKEN)).await;
    let client = reqwest::Client::new();
    let submitted = client
        .post(host.at("/tasks"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"plugin": "echo"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);

    for authorization in [
        None,
        Some(format!("Bearer {API_TOKEN}")),
        Some("Bearer admin-token-0123456789abcdeX".to_owned()),
    ] {
        let refused = call(
            &client,
            &host,
            "GET",
            "/admin/backup",
            authorization.as_deref(),
        )
        .await;
        assert_eq!(
            refused.status(),
            StatusCode::UNAUTHORIZED,
            "backup with {authorization:?}"
        );
        assert_eq!(refused.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            refused.json::<Value>().await.expect("json")["error"],
            "unauthorized"
        );
    }
    let backup = client
        .get(host.at("/admin/backup"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("backup");
    assert_eq!(backup.status(), StatusCode::OK);
    let backup: Value = backup.json().await.expect("backup document");
    assert_eq!(
        backup["tasks"].as_array().map(Vec::len),
        Some(1),
        "{backup}"
    );

    for token in [None, Some(API_TOKEN)] {
        let mut request = client.post(host.at("/admin/restore")).json(&backup);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let refused = request.send().await.expect("restore");
        assert_eq!(
            refused.status(),
            StatusCode::UNAUTHORIZED,
            "restore with {token:?}"
        );
    }
    let restored = client
        .post(host.at("/admin/restore"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&backup)
        .send()
        .await
        .expect("restore");
    assert_eq!(restored.status(), StatusCode::OK);
    let summary: Value = restored.json().await.expect("summary");
    assert_eq!(
        summary["restored"].as_u64().unwrap_or(0) + summary["skipped"].as_u64().unwrap_or(0),
        1,
        "{summary}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
    let host = host(Some(API_TOKEN), Some(ADMIN_TOKEN)).await;
    let client = reqwest::Client::new();
    // RFC 7235 §2.1: the scheme is case-insensitive, and one or more spaces
    // separate it from the token.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        for gap in [" ", "   "] {
            let api = call(
                &client,
                &host,
                "GET",
                "/stats",
                Some(&format!("{scheme}{gap}{API_TOKEN}")),
            )
            .await;
            assert_eq!(api.status(), StatusCode::OK, "{scheme:?}{gap:?} on /stats");
            let admin = call(
                &client,
                &host,
                "GET",
                "/admin/backup",
                Some(&format!("{scheme}{gap}{ADMIN_TOKEN}")),
            )
            .await;
            assert_eq!(
                admin.status(),
                StatusCode::OK,
                "{scheme:?}{gap:?} on /admin/backup"
            );
        }
    }
    // Other schemes, no scheme, no separator, a token differing in case.
    for refused in [
        // `user:<API token>`, base64-encoded.
        "Basic dXNlcjphcGktdG9rZW4tMDEyMzQ1Njc4OWFiY2RlZg==",
        &format!("Basic {API_TOKEN}"),
        &format!("Token {API_TOKEN}"),
        API_TOKEN,
        &format!("Bearer{API_TOKEN}"),
        &format!("Bearer\t{API_TOKEN}"),
        &format!("Bearer {}", API_TOKEN.to_uppercase()),
        "Bearer",
    ] {
        let response = call(&client, &host, "GET", "/stats", Some(refused)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
    }
    host.stop().await;
}

/// Every way of configuring tokens: for each operation the served OpenAPI
/// description lists, a request without a token is refused exactly when the
/// operation declares a security requirement, and a token is accepted
/// exactly when the operation declares that token's scheme (or none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_declares_the_authentication_the_host_enforces() {
    let client = reqwest::Client::new();
    for (api_token, admin_token) in [
        (Some(API_TOKEN), Some(ADMIN_TOKEN)),
        (Some(API_TOKEN), None),
        (None, Some(ADMIN_TOKEN)),
        (None, None),
    ] {
        let host = host(api_token, admin_token).await;
        let doc: Value = client
            .get(host.at("/openapi.json"))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("json");
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let tokens: Vec<(&str, &str)> = [("api_token", api_token), ("admin_token", admin_token)]
            .into_iter()
            .filter_map(|(scheme, token)| Some((scheme, token?)))
            .collect();
        let configured: Vec<&str> = tokens.iter().map(|(scheme, _)| *scheme).collect();
        let mut declared_names: Vec<&str> = schemes.keys().map(String::as_str).collect();
        declared_names.sort_unstable();
        let mut expected_names = configured.clone();
        expected_names.sort_unstable();
        assert_eq!(
            declared_names, expected_names,
            "security schemes with tokens {configured:?}"
        );
        for scheme in schemes.values() {
            assert_eq!(
                (scheme["type"].as_str(), scheme["scheme"].as_str()),
                (Some("http"), Some("bearer")),
                "{scheme}"
            );
        }

        let mut checked = 0;
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            // Harmless arguments: nothing named exists, and bodies are empty.
            let concrete = path
                .replace("{id}", "3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70")
                .replace("{name}", "no-such-plugin");
            for (method, operation) in item.as_object().expect("path item") {
                let Some(security) = operation.get("security") else {
                    for authorization in [None].into_iter().chain(
                        tokens
                            .iter()
                            .map(|(_, token)| Some(format!("Bearer {token}"))),
                    ) {
                        let response =
                            call(&client, &host, method, &concrete, authorization.as_deref()).await;
                        assert_ne!(
                            response.status(),
                            StatusCode::UNAUTHORIZED,
                            "{method} {path} declares no security, with {configured:?}"
                        );
                    }
                    checked += 1;
                    continue;
                };
                let accepted: Vec<&str> = security
                    .as_array()
                    .expect("security")
                    .iter()
                    .flat_map(|r| r.as_object().expect("requirement").keys())
                    .map(String::as_str)
                    .collect();
                assert!(
                    !accepted.is_empty(),
                    "{method} {path}: an empty requirement would make the token optional"
                );
                let response = call(&client, &host, method, &concrete, None).await;
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} declares {accepted:?} but takes no token"
                );
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} declares no 401 answer"
                );
                for (scheme, token) in &tokens {
                    let response = call(
                        &client,
                        &host,
                        method,
                        &concrete,
                        Some(&format!("Bearer {token}")),
                    )
                    .await;
                    if accepted.contains(scheme) {
                        assert_ne!(
                            response.status(),
                            StatusCode::UNAUTHORIZED,
                            "{method} {path} declares {scheme} but refuses it"
                        );
                    } else {
                        assert_eq!(
                            response.status(),
                            StatusCode::UNAUTHORIZED,
                            "{method} {path} does not declare {scheme} but takes it"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 16, "operations in the description");
        host.stop().await;
    }
}

/// The CLI's token from Secrets Manager (moto): `TASKFLOW_TOKEN_SECRET` for
/// client commands and `TASKFLOW_ADMIN_TOKEN_SECRET` for plugin, backup and
/// restore commands, as `taskflow deploy` writes them into `.env` instead of
/// the tokens; none set is a 401 said as such, a secret that cannot be read
/// is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_its_tokens_from_the_secrets_deploy_names() {
    use taskflow_tests::process::cli_env;
    let host = host(Some(API_TOKEN), Some(ADMIN_TOKEN)).await;
    let secrets = aws_sdk_secretsmanager::Client::new(&taskflow_tests::aws::sdk().await);
    let mut arns = Vec::new();
    for token in [API_TOKEN, ADMIN_TOKEN] {
        let created = secrets
            .create_secret()
            .name(format!(
                "taskflow-test-token-{}",
                uuid::Uuid::new_v4().simple()
            ))
            .secret_string(token)
            .send()
            .await
            .expect("create the secret in moto");
        arns.push(created.arn().expect("arn").to_string());
    }
    let (api, admin) = (arns[0].clone(), arns[1].clone());
    let url = host.url.clone();
    let wasm = taskflow_tests::plugin_wasm("echo")
        .to_string_lossy()
        .into_owned();
    let runs = tokio::task::spawn_blocking(move || {
        let with = |env: &[(&str, &str)], args: &[&str]| cli_env(Some(&url), env, args);
        [
            with(&[], &["stats"]),
            with(&[("TASKFLOW_TOKEN_SECRET", api.as_str())], &["stats"]),
            // The API token cannot upload; the admin token's secret can.
            with(
                &[("TASKFLOW_TOKEN_SECRET", api.as_str())],
                &["plugins", "upload", &wasm, "--name", "echo-by-secret"],
            ),
            with(
                &[
                    ("TASKFLOW_TOKEN_SECRET", api.as_str()),
                    ("TASKFLOW_ADMIN_TOKEN_SECRET", admin.as_str()),
                ],
                &["plugins", "upload", &wasm, "--name", "echo-by-secret"],
            ),
            with(&[("TASKFLOW_TOKEN_SECRET", "no-such-secret")], &["stats"]),
        ]
    })
    .await
    .expect("the CLI runs");
    let [none, by_secret, api_upload, admin_upload, missing] = runs;
    assert!(
        !none.ok && none.stderr.contains("TASKFLOW_TOKEN_SECRET"),
        "without a token: {none:?}"
    );
    assert!(
        by_secret.ok,
        "stats with the API token's secret: {by_secret:?}"
    );
    assert!(by_secret.stdout.contains("\"system\""), "{by_secret:?}");
    assert!(
        !api_upload.ok && api_upload.stderr.contains("refused the token"),
        "the API token does not upload: {api_upload:?}"
    );
    assert!(
        admin_upload.ok,
        "upload with the admin token's secret: {admin_upload:?}"
    );
    assert!(
        !missing.ok
            && missing.stderr.contains("cannot read the API token")
            && missing.stderr.contains("no-such-secret"),
        "{missing:?}"
    );
}
