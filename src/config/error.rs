//! Configuration errors: every problem names its key path, and all are reported at once.

use std::fmt;

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `limits.max_message_size` or `users[2].password_hash`.
    pub key: String,
    /// What is wrong, lower-case, no trailing period.
    pub message: String,
}

/// Everything that stops a configuration from loading.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given on the command line.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path given on the command line.
        path: String,
        /// toml's description, which names the key and line.
        message: String,
    },
    /// Values that parse but are not acceptable.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for p in self.0 {
            write!(f, "\n  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}
