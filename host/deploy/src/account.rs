//! Who a deploy acts as and where, said before anything changes: the
//! account and identity (STS `GetCallerIdentity`) and the region with where
//! each setting came from. Missing or refused credentials and an unreachable
//! endpoint are said as such, not as a failure of whatever call came first.

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

/// The identity the SDK's credentials belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The 12-digit account id.
    pub id: String,
    /// The user's or role's ARN.
    pub arn: String,
}

/// Asks STS whose credentials these are.
pub async fn identify(sdk: &aws_config::SdkConfig, region: &str) -> anyhow::Result<Account> {
    if sdk.credentials_provider().is_none() {
        anyhow::bail!("{}", no_credentials());
    }
    let answer = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|error| anyhow::anyhow!("{}", explain(&error, region)))?;
    Ok(Account {
        id: answer.account().unwrap_or("unknown").to_string(),
        arn: answer.arn().unwrap_or("unknown").to_string(),
    })
}

fn no_credentials() -> &'static str {
    "no AWS credentials were found: run `aws configure` (or `aws sso login`), set AWS_PROFILE to a profile that has them, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
}

/// A failed `GetCallerIdentity`, as what the user has to fix.
fn explain<E, R>(error: &SdkError<E, R>, region: &str) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let text = taskflow_aws::error_text(error);
    if let SdkError::ServiceError(service) = error {
        let code = service.err().code().unwrap_or_default();
        return match code {
            "InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException" => {
                format!(
                    "AWS refused the credentials ({text}): the access key is unknown or its secret is wrong; check AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            }
            "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => format!(
                "the AWS credentials have expired ({text}): sign in again (e.g. `aws sso login`) or refresh the session token"
            ),
            "AccessDenied" => format!(
                "these credentials may not even ask who they are ({text}): use credentials allowed sts:GetCallerIdentity"
            ),
            _ => format!("AWS STS GetCallerIdentity failed: {text}"),
        };
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("credentials") && !lower.contains("refused") {
        return format!("{} ({text})", no_credentials());
    }
    format!(
        "cannot reach AWS in region {region} ({text}): check AWS_REGION, the network, and AWS_ENDPOINT_URL if one is set"
    )
}

/// Where a setting came from, for the line that says where a deploy goes.
pub fn source(name: &str, from_env_file: &[String], env_file: &std::path::Path) -> String {
    if from_env_file.iter().any(|key| key == name) {
        format!(
            "from {} (written by an earlier deploy; unset it there to use your profile's)",
            env_file.display()
        )
    } else if std::env::var_os(name).is_some() {
        format!("from {name}")
    } else {
        "from the AWS profile".to_string()
    }
}
