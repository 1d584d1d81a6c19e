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
