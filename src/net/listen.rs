//! Binding the listening sockets before the workers start.
//!
//! Every worker gets its own socket per address, all with SO_REUSEPORT, so the kernel spreads
//! connections over the cores. Port 0 is resolved once: the first socket picks the port and the
//! others bind to the same one.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::resolved::Listener;
use crate::smtp::PortRole;

/// The sockets of one configured address: one per worker.
pub struct Bound {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// The role.
    pub role: PortRole,
    /// One socket per worker.
    pub sockets: Vec<TcpListener>,
}

/// Binds `workers` sockets for each listener.
pub fn bind_all(listeners: &[Listener], workers: usize) -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for l in listeners {
        let first = bind_one(l.addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(bind_one(addr)?);
        }
        out.push(Bound {
            addr,
            role: l.role,
            sockets,
        });
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(4096)?;
    Ok(socket.into())
}
