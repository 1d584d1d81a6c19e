//! The database's credentials in AWS Secrets Manager, which RDS rotates.
//!
//! The secret is read at start, again as soon as PostgreSQL refuses a
//! password (a rotation happened), and every [`REFRESH`] in any case; a new
//! value changes the options the pool opens its next connections with, while
//! the open ones keep working (PostgreSQL checks a password only at connect).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};
use taskflow_aws::secrets::{SecretError, read};
use taskflow_postgres::CREDENTIALS_REFUSED;
use taskflow_postgres::connect::{Credentials, with_credentials};
use tokio_util::sync::CancellationToken;

/// How often the database secret is read again with nothing refused.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The least time between two reads, however often passwords are refused.
const MIN_GAP: Duration = Duration::from_secs(2);

/// The credentials in a secret's text: JSON with `password` (and
/// `username`), or the password alone.
pub fn parse_credentials(id: &str, text: &str) -> Result<Credentials, SecretError> {
    let shape = |what| SecretError::Shape {
        id: id.to_string(),
        what,
    };
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| shape("text that starts like JSON but does not parse"))?;
        let password = value["password"]
            .as_str()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| shape("JSON without a \"password\" string"))?;
        Ok(Credentials {
            username: value["username"].as_str().map(str::to_string),
            password: password.to_string(),
        })
    } else if text.is_empty() {
        Err(shape("an empty text"))
    } else {
        Ok(Credentials {
            username: None,
            password: text.to_string(),
        })
    }
}

/// The database's credentials in Secrets Manager.
#[derive(Debug, Clone)]
pub struct DatabaseSecret {
    client: aws_sdk_secretsmanager::Client,
    id: String,
}

impl DatabaseSecret {
    /// The secret `id` (name or ARN), read with `sdk`'s settings.
    pub fn new(sdk: &aws_config::SdkConfig, id: &str) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            id: id.to_string(),
        }
    }

    /// The credentials the secret holds now.
    pub async fn credentials(&self) -> Result<Credentials, SecretError> {
        parse_credentials(&self.id, &read(&self.client, &self.id).await?)
    }

    /// Keeps `pool`'s connect options (`base` with the secret's credentials)
    /// in step with the secret until `stop`, starting from `current`.
    pub async fn keep_fresh(
        self,
        pool: PgPool,
        base: PgConnectOptions,
        mut current: Credentials,
        stop: CancellationToken,
    ) {
        loop {
            let refused = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => false,
                () = CREDENTIALS_REFUSED.notified() => true,
            };
            match self.credentials().await {
                Ok(fresh) if fresh != current => {
                    pool.set_connect_options(with_credentials(base.clone(), &fresh));
                    tracing::info!(secret = %self.id, "database credentials changed in Secrets Manager: new connections use them");
                    current = fresh;
                }
                Ok(_) if refused => {
                    tracing::warn!(secret = %self.id, "PostgreSQL refused the password the secret holds");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the database credentials again"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(MIN_GAP) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_rds_json_or_a_bare_password() {
        let rds = parse_credentials("s", r#"{"username": "taskflow", "password": "p4ss"}"#)
            .expect("RDS's form");
        assert_eq!(rds.username.as_deref(), Some("taskflow"));
        assert_eq!(rds.password, "p4ss");
        let bare = parse_credentials("s", "just-a-password").expect("bare");
        assert_eq!(
            (bare.username, bare.password.as_str()),
            (None, "just-a-password")
        );
        for bad in [
            "",
            r#"{"username": "x"}"#,
            r#"{"password": ""}"#,
            "{not json",
        ] {
            let error = parse_credentials("s", bad).expect_err(bad);
            assert!(error.to_string().contains("password"), "{error}");
        }
    }
}
