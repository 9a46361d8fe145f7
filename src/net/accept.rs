//! Accept loops: several accepts in flight per listener, admission asked of the application,
//! a refused client told why (the reply `smtp` maps) and closed.
//!
//! A connection from a load balancer in `listen.proxy_protocol` must open with a PROXY header
//! (`proxy.rs`); it is read here, before admission, so that the per-address limits, the session
//! and its log see the client the balancer names. A balancer that sends no valid header within
//! [`PROXY_HEADER_TIMEOUT`] is logged and disconnected without a greeting. A header that names
//! no client (v2 `LOCAL` or `UNSPEC`, v1 `UNKNOWN`) leaves the balancer's address, but never
//! its relay trust: HAProxy sends those for its health checks and for clients it cannot name
//! (a unix socket), and those must not relay without AUTH because the balancer may.
//!
//! Connections still waiting for their header are not admitted yet, so they are capped on
//! their own: [`MAX_AWAITING_HEADER`] per core.

use std::cell::Cell;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::smtp::PortRole;
use crate::smtp::{ConnectionRefused, Reply};

use super::Application;
use super::conn::Arrival;
use super::proxy::{self, Header, Parsed};
use super::transport::Transport;

/// Longest wait for a balancer's PROXY header (HAProxy sends it with the connection).
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per core waiting for their PROXY header; more are closed at once.
pub const MAX_AWAITING_HEADER: usize = 512;

thread_local! {
    /// Connections of this core waiting for their PROXY header.
    static AWAITING_HEADER: Cell<usize> = const { Cell::new(0) };
}

/// Accept operations kept in flight per listener and core: with one, a busy event loop accepts
/// at most one connection per turn and new clients wait in the backlog.
pub const ACCEPTS_IN_FLIGHT: usize = 16;

/// Starts the accept loops of one listener on the current runtime.
pub fn spawn_listener<A: Application>(
    app: &Rc<A>,
    listener: std::net::TcpListener,
    role: PortRole,
) {
    let listener = Rc::new(tokio_uring::net::TcpListener::from_std(listener));
    for _ in 0..ACCEPTS_IN_FLIGHT {
        tokio_uring::spawn(accept_loop(Rc::clone(app), Rc::clone(&listener), role));
    }
}

async fn accept_loop<A: Application>(
    app: Rc<A>,
    listener: Rc<tokio_uring::net::TcpListener>,
    role: PortRole,
) {
    let mut shutdown = app.shutdown();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer): (tokio_uring::net::TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning; the listener stays open.
                app.accept_failed(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let transport = Transport::new(stream);
        if app.proxied(peer.ip()) {
            if AWAITING_HEADER.get() >= MAX_AWAITING_HEADER {
                tracing::debug!(%peer, "too many connections waiting for a PROXY header; closed");
                tokio_uring::spawn(async move {
                    let mut transport = transport;
                    transport.close().await;
                });
                continue;
            }
            // Counted now, not when the task first runs: every accept of this turn sees it.
            let waiting = Awaiting::new();
            tokio_uring::spawn(serve_proxied(
                Rc::clone(&app),
                transport,
                peer,
                role,
                waiting,
            ));
            continue;
        }
        let ip = peer.ip();
        if let Err(why) = app.admit(ip, true) {
            tokio_uring::spawn(refuse(transport, why));
            continue;
        }
        let app = Rc::clone(&app);
        tokio_uring::spawn(async move {
            super::conn::serve(Rc::clone(&app), transport, Arrival::direct(peer), role).await;
            app.release(ip);
        });
    }
}

/// One connection of this core waiting for its PROXY header, counted until dropped.
struct Awaiting;

impl Awaiting {
    fn new() -> Awaiting {
        AWAITING_HEADER.set(AWAITING_HEADER.get() + 1);
        Awaiting
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        AWAITING_HEADER.set(AWAITING_HEADER.get() - 1);
    }
}

/// Tells a refused client why, and closes.
async fn refuse(mut transport: Transport, why: ConnectionRefused) {
    let mut text = Vec::new();
    Reply::from(&why).encode(&mut text);
    let _ = transport.write_all(text).await;
    transport.close().await;
}

/// A connection from a trusted balancer: its PROXY header, then admission and the session as
/// for the client it names.
async fn serve_proxied<A: Application>(
    app: Rc<A>,
    mut transport: Transport,
    balancer: SocketAddr,
    role: PortRole,
    waiting: Awaiting,
) {
    let read = tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_header(&transport)).await;
    drop(waiting);
    let (header, pending) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(Some(why))) => {
            tracing::warn!(%balancer, error = %why, "connection from a proxy_protocol peer without a valid PROXY header; closed");
            transport.close().await;
            return;
        }
        // Connected and closed without a byte: a balancer's TCP health check.
        Ok(Err(None)) => {
            tracing::debug!(%balancer, "proxy_protocol peer closed before sending anything");
            transport.close().await;
            return;
        }
        Err(_) => {
            tracing::warn!(%balancer, "connection from a proxy_protocol peer without a valid PROXY header within 10 s; closed");
            transport.close().await;
            return;
        }
    };
    let (client, untrusted) = match header {
        // `::ffff:a.b.c.d` (HAProxy on a dual-stack bind) is the IPv4 client it names: one
        // address for the limits, the log and Received.
        Header::Proxied { source, .. } => (
            SocketAddr::new(source.ip().to_canonical(), source.port()),
            false,
        ),
        Header::Local => (balancer, true),
    };
    let ip = client.ip();
    if let Err(why) = app.admit(ip, !untrusted) {
        refuse(transport, why).await;
        return;
    }
    let arrival = Arrival {
        peer: client,
        via: Some(balancer),
        pending,
        untrusted,
    };
    super::conn::serve(Rc::clone(&app), transport, arrival, role).await;
    app.release(ip);
}

/// Reads until the bytes hold a complete PROXY header: the header, and what came after it; or
/// why not (`None`: the peer closed without sending a byte).
async fn read_header(transport: &Transport) -> Result<(Header, Vec<u8>), Option<String>> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match proxy::parse(&buf) {
            Ok(Parsed::Complete(header, len)) => return Ok((header, buf.split_off(len))),
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(Some(e.to_string())),
        }
        let (res, b) = transport.read_raw_sized(buf, 256).await;
        buf = b;
        match res {
            Ok(0) if buf.is_empty() => return Err(None),
            Ok(0) => return Err(Some("closed before a complete PROXY header".into())),
            Ok(_) => {}
            // A TCP health check may close with a reset rather than a FIN.
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(None);
            }
            Err(e) => return Err(Some(e.to_string())),
        }
    }
}
