//! Blobs in a PostgreSQL table (`blobs`, created by the store's
//! migrations): where a fleet without S3 keeps its plugins' bytes.

use bytes::Bytes;
use sqlx::PgPool;

use chrono::{DateTime, Utc};

use taskflow_backend::blobs::{BlobError, BlobStore, Listed};

/// The `blobs` table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgBlobs {
    pool: PgPool,
}

impl PgBlobs {
    /// The table in the database of `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn unavailable(error: sqlx::Error) -> BlobError {
    BlobError::Unavailable(format!("PostgreSQL blobs: {error}"))
}

#[async_trait::async_trait]
impl BlobStore for PgBlobs {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        sqlx::query(
            "INSERT INTO blobs (key, bytes) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET bytes = $2, updated_at = now()",
        )
        .bind(key)
        .bind(bytes.as_ref())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar("SELECT bytes FROM blobs WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(bytes.map(Bytes::from))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        sqlx::query("DELETE FROM blobs WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, BlobError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT key, updated_at FROM blobs
             WHERE starts_with(key, $1) AND ($2::text IS NULL OR key > $2)
             ORDER BY key LIMIT $3",
        )
        .bind(prefix)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(key, written_at)| Listed { key, written_at })
            .collect())
    }

    async fn check(&self) -> Result<(), BlobError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
