//! The io_uring glue: the only module that owns sockets. Thin and mechanical — it reads, hands
//! bytes to the sans-IO sessions, writes what they ask for and arms their timers.

pub mod conn;
pub mod listen;
pub mod signals;
pub mod tls;
pub mod transport;
pub mod worker;
