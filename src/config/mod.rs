//! Configuration in two stages: `raw` (serde, as written) and `resolved` (checked, typed).
//!
//! `resolved::resolve` checks the top-level keys and hands each section to its own file, which
//! holds the section's types, defaults and checks: `listen` (`[listen]`, `[tls]`), `users`
//! (`[[users]]`, `[relay]`), `limits`, `spool`, `delivery`, `egress` (`[[egress.sources]]`,
//! `[[egress.pools]]`), `shaping` (`[[shaping]]` and the built-in rules), `content` (`[[dkim]]`,
//! `[scan]`), `autoconfig`.
//! Values come out in their consumers' own types where one exists (`RetryPolicy`,
//! `TlsPolicy`, `PortRole`, `spool::Durability`, the DKIM signer's key), and every problem is
//! reported at once.

pub mod autoconfig;
pub mod cluster;
mod content;
mod delivery;
pub mod egress;
pub mod error;
mod limits;
mod listen;
pub mod raw;
pub mod resolved;
pub mod shaping;
mod spool;
pub mod tokens;
mod users;
pub mod webhooks;

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
