//! The kinds of failure a task records.

use serde::{Deserialize, Serialize};

/// Kinds of task failure, as recorded on the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The plugin said a retry could help.
    Retryable,
    /// The plugin rejected the payload.
    InvalidInput,
    /// The plugin said it cannot process the task.
    Fatal,
    /// The task ran past its timeout.
    Timeout,
    /// The task tried to use more memory than its cap.
    MemoryLimit,
    /// The task used up its fuel.
    FuelExhausted,
    /// The plugin trapped (a panic, `unreachable`, a stack overflow …).
    Trap,
    /// The plugin could not be instantiated.
    Instantiation,
    /// The plugin returned more than the result limit.
    OutputTooLarge,
    /// No plugin of that name is loaded.
    PluginNotFound,
    /// The host stopped before the task finished.
    Interrupted,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 11] = [
        Self::Retryable,
        Self::InvalidInput,
        Self::Fatal,
        Self::Timeout,
        Self::MemoryLimit,
        Self::FuelExhausted,
        Self::Trap,
        Self::Instantiation,
        Self::OutputTooLarge,
        Self::PluginNotFound,
        Self::Interrupted,
    ];

    /// Whether running the task again could succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Retryable | Self::Timeout | Self::Interrupted)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(text.as_deref().unwrap_or("unknown"))
    }
}
