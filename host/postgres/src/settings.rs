//! What `taskflow serve` reads for PostgreSQL: its flags and environment
//! variables, flattened into the server's settings.

use std::path::PathBuf;

use clap::Args;

/// The database of `--storage postgres` (and `--queue postgres`).
#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL for `--storage postgres`.
    #[arg(long, env = "TASKFLOW_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PEM file of the certificate authorities that may sign the database's
    /// certificate, for `sslmode=verify-ca` or `verify-full` (the URL's own
    /// `sslrootcert` wins).
    #[arg(long, env = "TASKFLOW_DATABASE_CA")]
    pub database_ca: Option<PathBuf>,

    /// Secrets Manager secret (name or ARN) holding the database's
    /// credentials: JSON with `password` and optionally `username` (the form
    /// RDS keeps its managed master secret in), or the password alone. Read
    /// at start, again whenever PostgreSQL refuses the password, and every
    /// few minutes, so rotation needs no restart.
    #[arg(long, env = "TASKFLOW_DATABASE_SECRET")]
    pub database_secret: Option<String>,

    /// Most PostgreSQL connections this host keeps open.
    #[arg(long, env = "TASKFLOW_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_pool_size: u32,
}
