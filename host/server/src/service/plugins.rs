//! Plugin administration through the service: on shared backends an upload
//! or a removal on this host is published to the fleet's catalog, so every
//! host converges on it (see [`crate::fleet`]).

use taskflow_postgres::PluginCatalog;
use taskflow_runtime::PluginError;
use taskflow_runtime::registry::PluginEntry;

use super::{ServiceError, TaskService};

impl TaskService {
    /// Shares plugin uploads and removals with the hosts of `catalog`.
    pub fn with_catalog(mut self, catalog: PluginCatalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Checks and compiles `bytes` as plugin `name` (a rejected version
    /// changes nothing), on shared backends makes it the version of every
    /// host, then serves it here. A version the fleet could not record is
    /// served nowhere: no host runs a version the others do not have.
    pub async fn install_plugin(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<PluginEntry, ServiceError> {
        let prepared = self.registry.prepare(name, bytes).await?;
        if let Some(catalog) = &self.catalog {
            catalog
                .publish(name, prepared.digest(), prepared.bytes())
                .await?;
        }
        Ok(self.registry.commit(prepared).await?)
    }

    /// Unloads plugin `name` here and, on shared backends, on every host.
    pub async fn remove_plugin(&self, name: &str) -> Result<(), ServiceError> {
        let removed = self.registry.remove(name).await;
        if let Some(catalog) = &self.catalog
            && catalog.has(name).await?
        {
            catalog.retract(name).await?;
            return match removed {
                Ok(()) | Err(PluginError::NotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Ok(removed?)
    }

    /// Whether a plugin `name` runs here, or in the fleet (this host loads
    /// it within seconds).
    pub(super) async fn plugin_known(&self, name: &str) -> Result<bool, ServiceError> {
        if self.registry.contains(name) {
            return Ok(true);
        }
        match &self.catalog {
            Some(catalog) => Ok(catalog.has(name).await?),
            None => Ok(false),
        }
    }

    /// Whether `name` is a plugin of the fleet that this host has not loaded yet.
    pub(super) async fn plugin_on_its_way(&self, name: &str) -> bool {
        !self.registry.contains(name) && self.plugin_known(name).await.unwrap_or(false)
    }
}
