//! The settings every host sharing a database must agree on: which queue
//! (and its SQS prefix) and where large bodies live (and the bucket). A
//! host started with others would take tasks it cannot run (a payload in a
//! bucket it has no access to) or leave tasks nobody takes (sent to a queue
//! no other host reads): the first host records the fleet's, and every
//! later one compares its own at start.

use std::collections::BTreeMap;

use sqlx::PgPool;

use taskflow_backend::storage::StorageError;

use super::unavailable;

/// The settings a fleet shares, by their environment variable names.
pub type FleetSettings = BTreeMap<String, String>;

/// Why a host may not join the fleet of its database.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The database answered badly.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The host's settings differ from the fleet's.
    #[error(
        "this host's settings differ from those of the fleet sharing its database: {0}; start it with the fleet's settings (to change the fleet's, stop every host, run `DELETE FROM fleet_settings` in the database, and start them with the new ones)"
    )]
    Differ(String),
}

/// Records `ours` as the fleet's settings if none are recorded yet, else
/// checks that they are the same.
pub async fn agree(pool: &PgPool, ours: &FleetSettings) -> Result<(), SettingsError> {
    let json = serde_json::to_value(ours).map_err(|source| StorageError::Encode {
        what: "the fleet's settings".into(),
        source,
    })?;
    sqlx::query("INSERT INTO fleet_settings (settings) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(&json)
        .execute(pool)
        .await
        .map_err(unavailable)?;
    let recorded: serde_json::Value = sqlx::query_scalar("SELECT settings FROM fleet_settings")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    let theirs: FleetSettings = serde_json::from_value(recorded).unwrap_or_default();
    let differences: Vec<String> = ours
        .keys()
        .chain(theirs.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|key| ours.get(*key) != theirs.get(*key))
        .map(|key| {
            let show = |v: Option<&String>| v.map_or_else(|| "unset".to_string(), Clone::clone);
            format!(
                "{key} is {} here, {} in the fleet",
                show(ours.get(key)),
                show(theirs.get(key))
            )
        })
        .collect();
    if differences.is_empty() {
        Ok(())
    } else {
        Err(SettingsError::Differ(differences.join("; ")))
    }
}
