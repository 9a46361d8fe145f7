//! The io_uring glue: the only module that owns sockets (SMTP in and out, and the scanner
//! clients' streams). Thin and mechanical — it reads, hands
//! bytes to the sans-IO sessions, writes what they ask for and arms their timers.
//!
//! It knows the application only through [`Application`]: admission, session settings,
//! credentials, commits and the shutdown signal. It writes no reply text of its own (a refused
//! connection gets the reply `smtp` maps for it).

pub mod accept;
pub mod conn;
pub mod listen;
pub mod peek;
pub mod proxy;
pub mod signals;
pub mod stream;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ids::QueueId;
use crate::smtp::PortRole;
use crate::smtp::{
    AuthOutcome, CommitError, ConnectionRefused, PeerInfo, SessionConfig, Transaction,
};

/// What a connection needs to start its session.
pub struct SessionSetup {
    /// Session settings for the listener's role.
    pub config: Arc<SessionConfig>,
    /// The peer, and whether it is in the trusted networks.
    pub peer: PeerInfo,
    /// The server TLS configuration (implicit TLS and STARTTLS).
    pub tls: Arc<rustls::ServerConfig>,
    /// Longest wait for a command line or a TLS handshake.
    pub command_timeout: Duration,
    /// Longest wait for the rest of a message body.
    pub data_timeout: Duration,
    /// Recipients the application refuses at RCPT (its suppression list).
    pub recipient_check: Option<Arc<dyn crate::smtp::RecipientCheck>>,
}

/// The application, as the I/O layer sees it. The worker implements it; `net` calls nothing
/// else of it.
pub trait Application: 'static {
    /// Decides whether a new connection from `ip` is served, and counts it when it is. With
    /// `may_trust` false the per-address limits apply even to a trusted address (a balancer's
    /// connection whose PROXY header named no client).
    fn admit(&self, ip: IpAddr, may_trust: bool) -> Result<(), ConnectionRefused>;
    /// Whether a connection from `ip` comes from a load balancer that opens it with a PROXY
    /// header (`listen.proxy_protocol`).
    fn proxied(&self, ip: IpAddr) -> bool;
    /// A connection that [`admit`](Self::admit) let in has ended.
    fn release(&self, ip: IpAddr);

    /// accept(2) failed (out of descriptors or memory); the listener backs off and retries.
    fn accept_failed(&self, error: &std::io::Error);
    /// The settings of a session on a listener of `role` with this peer.
    /// `may_trust` as for [`admit`](Self::admit).
    fn session(&self, role: PortRole, peer: SocketAddr, may_trust: bool) -> SessionSetup;
    /// Whether a client outside the trusted networks may start another transaction.
    fn allow_mail(&self, ip: IpAddr) -> bool;
    /// Checks AUTH credentials.
    fn authenticate(
        &self,
        username: String,
        password: String,
        ip: IpAddr,
    ) -> impl Future<Output = AuthOutcome>;
    /// Stores an accepted transaction; `Ok` only once it is durable (the 250).
    fn commit(&self, t: Transaction) -> impl Future<Output = Result<QueueId, CommitError>>;
    /// Becomes true when the server shuts down.
    fn shutdown(&self) -> watch::Receiver<bool>;
}
