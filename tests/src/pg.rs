//! PostgreSQL for the tests: the server at `TASKFLOW_TEST_DATABASE_URL`, by
//! default the development machines' `postgres://postgres@127.0.0.1:5432/test`
//! (the test command starts one where there is none). A missing server fails
//! the tests that need it; it never skips them. Each test works in a schema
//! of its own.

use sqlx::postgres::PgConnectOptions;

/// The test server's URL.
pub fn database_url() -> String {
    std::env::var("TASKFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema; the connection options of a store that lives in it.
pub async fn fresh_schema() -> (String, PgConnectOptions) {
    let url = database_url();
    let base: PgConnectOptions = url
        .parse()
        .expect("TASKFLOW_TEST_DATABASE_URL is a PostgreSQL URL");
    let schema = format!("taskflow_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect_with(base.clone())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {url} for these tests: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let options = base.options([("search_path", schema.as_str())]);
    (schema, options)
}

/// The URL a host is given to work in `schema` (as a connection option).
pub fn schema_url(schema: &str) -> String {
    let base = database_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// Removes a test's schema (a failed test leaves its own, to look at).
pub async fn drop_schema(schema: &str) {
    let admin = sqlx::PgPool::connect(&database_url())
        .await
        .expect("connect");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
    admin.close().await;
}

/// A fresh database on the test server, for a test that must not hear the
/// notifications of hosts in other tests' schemas (a channel is the whole
/// database's): its name and URL.
pub async fn fresh_database() -> (String, String) {
    let base = database_url();
    let name = format!("taskflow_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base} for these tests: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (address, query) = base.split_once('?').unwrap_or((&base, ""));
    let server = address
        .rsplit_once('/')
        .map_or(address, |(server, _)| server);
    let url = if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    };
    (name, url)
}

/// Removes a database made by [`fresh_database`].
pub async fn drop_database(name: &str) {
    let admin = sqlx::PgPool::connect(&database_url())
        .await
        .expect("connect");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
    admin.close().await;
}

/// A PostgreSQL server of a test's own (initdb in a temporary directory, a
/// free port), for tests that restart it. Stopped when dropped.
pub struct OwnServer {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnServer {
    /// Creates and starts a server (as the `postgres` user when run as root,
    /// which PostgreSQL refuses to run as).
    pub fn start() -> Self {
        Self::start_configured(|_| {})
    }

    /// Like [`start`](Self::start), with `configure` given the data
    /// directory after `initdb` and before the server starts (to write its
    /// `postgresql.conf`, `pg_hba.conf`, certificates).
    pub fn start_configured(configure: impl FnOnce(&std::path::Path)) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL server binaries must be installed (Debian: apt-get install postgresql)",
            )
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Self {
            bin,
            dir,
            port: crate::process::free_port(),
        };
        if server.as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(server.dir.path())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown the server directory to postgres"
            );
        }
        server.run(
            "initdb",
            &["-D", &server.data(), "-U", "postgres", "-A", "trust"],
        );
        configure(std::path::Path::new(&server.data()));
        if server.as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(server.data())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown the configured files to postgres"
            );
        }
        server.pg_ctl("start");
        server
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Options of a `postgres` superuser connection over its Unix socket
    /// (trusted, whatever `pg_hba.conf` asks of TCP connections).
    pub fn socket_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(self.dir.path())
            .port(self.port)
            .username("postgres")
            .database("postgres")
    }

    /// Restarts it at once, cutting every connection (`pg_ctl restart -m fast`).
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    fn data(&self) -> String {
        self.dir.path().join("db").to_string_lossy().into_owned()
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self
            .dir
            .path()
            .join("server.log")
            .to_string_lossy()
            .into_owned();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-m",
                "fast",
                "-w",
                action,
            ],
        );
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let binary = self.bin.join(tool);
        let mut command = if self.as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            std::process::Command::new(&binary)
        };
        let output = command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"])
        }));
    }
}
