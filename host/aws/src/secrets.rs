//! Secrets kept in AWS Secrets Manager rather than in settings: the
//! database's credentials, which RDS rotates, and the API tokens the CLI
//! reads when `.env` names their secret instead of holding them.

/// What went wrong reading a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager answered with an error or not at all.
    #[error("cannot read the secret {id} from Secrets Manager: {cause}")]
    Read { id: String, cause: String },
    /// The secret holds no text, or JSON without a password.
    #[error(
        "the secret {id} holds {what}: it must hold the password, or JSON with \"password\" (and \"username\")"
    )]
    Shape { id: String, what: &'static str },
}

/// A secret's current text.
pub async fn read(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<String, SecretError> {
    let answer = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| SecretError::Read {
            id: id.to_string(),
            cause: crate::error_text(&e),
        })?;
    answer
        .secret_string()
        .map(str::to_string)
        .ok_or(SecretError::Shape {
            id: id.to_string(),
            what: "no text (a binary secret)",
        })
}

/// The text of secret `id`, read with the SDK's usual settings.
pub async fn read_secret(id: &str) -> Result<String, SecretError> {
    let sdk = crate::sdk_config().await;
    read(&aws_sdk_secretsmanager::Client::new(&sdk), id).await
}
