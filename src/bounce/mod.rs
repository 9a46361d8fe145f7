//! What happens when delivery fails: the table-driven classifier (`classify`) decides retry or
//! bounce and names a category; `dsn` renders RFC 3464 delivery status notifications.

pub mod classify;
pub mod dsn;
