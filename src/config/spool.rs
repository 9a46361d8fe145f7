//! `[spool]`: durability, segment size and the size limit of each worker's spool.

use super::raw::RawSpool;
use super::resolved::Resolver;
use crate::spool::Durability;

/// Spool tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Durability mode.
    pub durability: Durability,
    /// Preallocated segment size in bytes.
    pub segment_size: u64,
    /// Largest spool per worker in bytes, 0 = unlimited.
    pub max_size: u64,
}

impl SpoolSettings {
    /// The spool settings, defaults applied and checked.
    pub(super) fn resolve(r: &mut Resolver, spool: &RawSpool) -> SpoolSettings {
        let durability = match spool.durability.as_deref() {
            None | Some("fsync") => Durability::Fsync,
            Some("none") => Durability::None,
            Some(other) => {
                r.problem(
                    "spool.durability",
                    format!("{other:?} is not \"fsync\" or \"none\""),
                );
                Durability::Fsync
            }
        };
        let settings = SpoolSettings {
            durability,
            segment_size: r.size("spool.segment_size", spool.segment_size.as_ref(), 64 << 20),
            max_size: r.size("spool.max_size", spool.max_size.as_ref(), 0),
        };
        if settings.segment_size < (1 << 20) {
            r.problem("spool.segment_size", "must be at least 1MiB");
        }
        settings
    }
}
