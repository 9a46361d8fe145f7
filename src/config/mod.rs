//! Configuration in two stages: `raw` (serde, as written) and `resolved` (checked, typed).
//!
//! Defaults live in `resolved.rs` only. Each module later receives its own slice of the resolved
//! config (`SessionLimits`, `RetryPolicy`, ...), never the whole tree.

pub mod error;
pub mod raw;
pub mod resolved;

pub use error::{ConfigError, Problem};
pub use resolved::Config;

use std::path::Path;

/// Reads and resolves a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_toml(&text, &path.display().to_string())
}

/// Parses and resolves TOML text; `origin` names it in errors.
pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    resolved::resolve(raw)
}
