//! How a host reaches PostgreSQL: the URL with its TLS settings (`sslmode`
//! `disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`;
//! `sslrootcert`), a CA bundle given apart from the URL, credentials given
//! apart from it (a secret store's), and a refused connection said in words
//! that name what to change.

use std::path::Path;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// A user name and password kept outside the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user, when the credentials name one (else the URL's).
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The connection options of `url`, with `ca` as the certificate
/// authorities to verify the server by unless the URL names its own
/// (`sslrootcert`).
pub fn options(url: &str, ca: Option<&Path>) -> Result<PgConnectOptions, String> {
    let options: PgConnectOptions = url.parse().map_err(|e| {
        format!("TASKFLOW_DATABASE_URL is not a valid PostgreSQL URL ({e}): e.g. postgres://taskflow@db.example.com:5432/taskflow?sslmode=verify-full")
    })?;
    let Some(ca) = ca else {
        return Ok(options);
    };
    if !ca.is_file() {
        return Err(format!(
            "TASKFLOW_DATABASE_CA names {}, which is not a readable file: give the PEM bundle of the CA that signed the database's certificate",
            ca.display()
        ));
    }
    if url_names_root_cert(url) {
        return Ok(options);
    }
    Ok(options.ssl_root_cert(ca))
}

fn url_names_root_cert(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("sslrootcert"))
    })
}

/// `options` with `credentials` in place of the URL's.
pub fn with_credentials(options: PgConnectOptions, credentials: &Credentials) -> PgConnectOptions {
    let options = match &credentials.username {
        Some(user) => options.username(user),
        None => options,
    };
    options.password(&credentials.password)
}

/// Whether PostgreSQL refused the credentials themselves (a wrong or
/// rotated password), not the connection.
pub fn refused_credentials(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01"))
}

/// A connection attempt that failed, in one line that names the cause and
/// the setting to change.
pub fn explain(error: &sqlx::Error, options: &PgConnectOptions) -> String {
    let mode = match options.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    let host = options.get_host();
    // rustls' verdicts on the server's certificate reach sqlx as I/O
    // errors of the handshake, its own refusals as TLS errors.
    let tls = match error {
        sqlx::Error::Tls(cause) => Some(cause.to_string()),
        sqlx::Error::Io(cause) if cause.to_string().contains("peer certificate") => {
            Some(cause.to_string())
        }
        _ => None,
    };
    if let Some(cause) = tls {
        return if cause.contains("NotValidForName") || cause.contains("not valid for name") {
            format!(
                "the database's TLS certificate does not name {host:?} ({cause}): connect by a name the certificate holds, or use sslmode=verify-ca in TASKFLOW_DATABASE_URL"
            )
        } else if cause.contains("invalid peer certificate") {
            format!(
                "the database's TLS certificate is not trusted with sslmode={mode} ({cause}): point sslrootcert in TASKFLOW_DATABASE_URL, or TASKFLOW_DATABASE_CA, at the PEM bundle of the CA that signed it"
            )
        } else if cause.contains("does not support TLS") {
            format!(
                "the database at {host} does not offer TLS but sslmode={mode} requires it: turn on ssl in the server, or use sslmode=prefer or disable in TASKFLOW_DATABASE_URL"
            )
        } else {
            format!("TLS to the database at {host} failed with sslmode={mode}: {cause}")
        };
    }
    match error {
        sqlx::Error::Database(db) => {
            let message = db.message();
            match db.code().as_deref() {
                Some("28000") if message.contains("no encryption") => format!(
                    "the database refuses connections without TLS ({message}): use sslmode=require, or verify-full with its CA, in TASKFLOW_DATABASE_URL (it has sslmode={mode})"
                ),
                Some("28P01") => format!(
                    "the database refused the password of user {:?} ({message}): check the URL's password, PGPASSWORD or the secret TASKFLOW_DATABASE_SECRET names",
                    options.get_username()
                ),
                _ => format!("PostgreSQL refused the connection: {message}"),
            }
        }
        other => format!("cannot connect to PostgreSQL at {host}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_setting_is_checked_and_gives_way_to_the_urls_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let error = options("postgres://u@db/x?sslmode=verify-full", Some(&ca))
            .expect_err("a missing CA file is refused");
        assert!(error.contains("TASKFLOW_DATABASE_CA"), "{error}");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let parsed = options("postgres://u@db/x?sslmode=verify-full", Some(&ca)).expect("options");
        assert!(matches!(parsed.get_ssl_mode(), PgSslMode::VerifyFull));
        assert!(url_names_root_cert(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/a.pem"
        ));
        assert!(!url_names_root_cert(
            "postgres://u@db/x?sslmode=verify-full"
        ));
        let error = options("postgres://u@db:notaport/x", None).expect_err("not a valid URL");
        assert!(error.contains("TASKFLOW_DATABASE_URL"), "{error}");
    }

    #[test]
    fn credentials_replace_the_urls_and_never_print_the_password() {
        let base: PgConnectOptions = "postgres://url-user@db/x".parse().expect("url");
        let named = Credentials {
            username: Some("taskflow".into()),
            password: "s3cret".into(),
        };
        assert_eq!(
            with_credentials(base.clone(), &named).get_username(),
            "taskflow"
        );
        let unnamed = Credentials {
            username: None,
            password: "s3cret".into(),
        };
        assert_eq!(with_credentials(base, &unnamed).get_username(), "url-user");
        assert!(!format!("{named:?}").contains("s3cret"));
    }
}
