//! TLS to PostgreSQL and credentials that outlive a rotation, against a
//! throwaway server of the test's own: a CA and a server certificate made
//! here with `openssl`, `ssl = on`, and a `pg_hba.conf` that takes TCP
//! connections only over TLS and only with a SCRAM password (as RDS does
//! with `rds.force_ssl`). The host is the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskflow_tests::pg::OwnServer;
use taskflow_tests::process::{HostProcess, free_port};
use taskflow_tests::{install_plugins, poll_json, taskflow_binary};

/// A certificate authority and a server certificate it signed for
/// `localhost` (not for 127.0.0.1), as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (Debian: apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN=TaskFlow test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

fn make_pki(dir: &Path) -> Pki {
    let ca = make_ca(dir, "ca");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
    Pki {
        ca,
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// A server that takes TCP connections over TLS with a password only, and
/// a `taskflow` role with `password` that owns a `taskflow` database.
async fn tls_only_server(pki: &Pki, password: &str) -> OwnServer {
    let server = OwnServer::start_configured(|data| {
        std::fs::copy(&pki.cert, data.join("server.crt")).expect("copy cert");
        std::fs::copy(&pki.key, data.join("server.key")).expect("copy key");
        set_mode(&data.join("server.key"), 0o600);
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        conf.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             password_encryption = scram-sha-256\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).expect("write conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
    });
    let admin = sqlx::PgPool::connect_with(server.socket_options())
        .await
        .expect("connect over the socket");
    for statement in [
        format!("CREATE ROLE taskflow LOGIN PASSWORD '{password}'"),
        "CREATE DATABASE taskflow OWNER taskflow".to_string(),
    ] {
        sqlx::query(&statement)
            .execute(&admin)
            .await
            .expect("set up the role");
    }
    admin.close().await;
    server
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `taskflow serve` on `url` that must fail to start: its standard error.
fn refused_start(url: &str, env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(taskflow_binary())
        .args(["serve", "--storage", "postgres", "--queue", "postgres"])
        .args(["--database-url", url])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskflow serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskflow serve on {url} did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "serve on {url} started: {stderr}");
    stderr
}

/// The one line `serve` printed when it refused to start.
fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line, not: {stderr}");
    eprintln!("refused as it should be: {}", lines[0]);
    lines[0]
}

/// Submits an `echo` task to `host` and waits until it completes. A 503
/// (the store unavailable for a moment) is tried again for up to 15 s.
async fn completes_a_task(host: &HostProcess, text: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let response = loop {
        let response = client
            .post(format!("{}/tasks", host.url))
            .json(&serde_json::json!({"plugin": "echo", "payload": {"text": text}}))
            .send()
            .await
            .expect("submit");
        if response.status() != 503 || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        response.status(),
        202,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let task: serde_json::Value = response.json().await.expect("json");
    let id = task["id"].as_str().expect("id").to_string();
    let done = poll_json(
        &client,
        &format!("{}/tasks/{id}", host.url),
        Duration::from_secs(60),
        |t| t["status"] == "completed" || t["status"] == "failed",
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["text"], text, "{done}");
}

async fn serve(url: &str, env: &[(String, String)]) -> (HostProcess, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo"]);
    let host = HostProcess::start_shared_with(data.path(), url, "postgres", &[], env).await;
    (host, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_are_honoured_and_a_refusal_names_its_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let other_ca = make_ca(dir.path(), "other-ca");
    let server = tls_only_server(&pki, "first-password").await;
    let port = server.port();
    let base = format!("postgres://taskflow:first-password@localhost:{port}/taskflow");

    // require: encrypted, the certificate not checked.
    let (host, _data) = serve(&format!("{base}?sslmode=require"), &[]).await;
    completes_a_task(&host, "over TLS, unverified").await;
    drop(host);

    // verify-full with the CA in the URL, and with the CA as a setting.
    let ca = pki.ca.display().to_string();
    let (host, _data) = serve(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"), &[]).await;
    completes_a_task(&host, "verified by the URL's CA").await;
    drop(host);
    let (host, _data) = serve(
        &format!("{base}?sslmode=verify-full"),
        &[("TASKFLOW_DATABASE_CA".into(), ca.clone())],
    )
    .await;
    completes_a_task(&host, "verified by TASKFLOW_DATABASE_CA").await;
    drop(host);

    // verify-full against a CA that did not sign the server's certificate.
    let stderr = refused_start(
        &format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            other_ca.display()
        ),
        &[],
    );
    let line = error_line(&stderr);
    assert!(
        line.contains("TLS certificate is not trusted") && line.contains("sslrootcert"),
        "{line}"
    );

    // verify-full by an address the certificate does not name.
    let stderr = refused_start(
        &format!(
            "postgres://taskflow:first-password@127.0.0.1:{port}/taskflow?sslmode=verify-full&sslrootcert={ca}"
        ),
        &[],
    );
    let line = error_line(&stderr);
    assert!(
        line.contains("certificate does not name \"127.0.0.1\"") && line.contains("verify-ca"),
        "{line}"
    );

    // disable against a server that takes TLS only.
    let stderr = refused_start(&format!("{base}?sslmode=disable"), &[]);
    let line = error_line(&stderr);
    assert!(
        line.contains("refuses connections without TLS") && line.contains("sslmode=require"),
        "{line}"
    );

    // A wrong password is said as such.
    let stderr = refused_start(
        &format!("postgres://taskflow:wrong@localhost:{port}/taskflow?sslmode=require"),
        &[],
    );
    let line = error_line(&stderr);
    assert!(
        line.contains("refused the password of user \"taskflow\""),
        "{line}"
    );
    assert!(
        !line.contains("wrong"),
        "the password is never printed: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_secrets_manager_survive_a_rotation() {
    use aws_sdk_secretsmanager::Client;

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let server = tls_only_server(&pki, "before-rotation").await;
    let secrets = Client::new(&taskflow_tests::aws::sdk().await);
    let name = format!("taskflow-test-db-{}", uuid::Uuid::new_v4().simple());
    let created = secrets
        .create_secret()
        .name(&name)
        .secret_string(r#"{"username": "taskflow", "password": "before-rotation"}"#)
        .send()
        .await
        .expect("create the secret in moto");
    let arn = created.arn().expect("arn").to_string();

    // The URL holds neither user nor password: both come from the secret.
    let url = format!(
        "postgres://localhost:{}/taskflow?sslmode=verify-full&sslrootcert={}",
        server.port(),
        pki.ca.display()
    );
    let mut env = taskflow_tests::aws::host_env();
    env.push(("TASKFLOW_DATABASE_SECRET".into(), arn.clone()));
    let (host, _data) = serve(&url, &env).await;
    completes_a_task(&host, "before the rotation").await;

    // Rotate as RDS does: the role's password, then the secret; then cut
    // every open connection, so the host must log in again.
    let admin = sqlx::PgPool::connect_with(server.socket_options())
        .await
        .expect("connect over the socket");
    sqlx::query("ALTER ROLE taskflow PASSWORD 'after-rotation'")
        .execute(&admin)
        .await
        .expect("rotate the password");
    secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"username": "taskflow", "password": "after-rotation"}"#)
        .send()
        .await
        .expect("rotate the secret");
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'taskflow'",
    )
    .fetch_all(&admin)
    .await
    .expect("cut the host's connections");
    assert!(!cut.is_empty(), "the host had connections open");
    admin.close().await;

    // The first new connection is refused, the host reads the secret again,
    // and tasks complete as before, with no restart.
    completes_a_task(&host, "after the rotation").await;
    drop(host);
}
