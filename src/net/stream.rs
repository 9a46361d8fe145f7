//! Client connections for the content scanners (clamd, rspamd): TCP or a local socket, with
//! tokio-uring's owned-buffer I/O and one deadline for a whole exchange.
//!
//! tokio-uring does not cancel in-flight operations, so on a timeout the socket is shut down
//! before it is dropped: without that, a read the peer never answers would keep the socket
//! (and its buffer) alive until the peer closed it.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};

use tokio::time::Instant;
use tokio_uring::buf::BoundedBuf;

/// A client connection over TCP or a local socket, with owned-buffer I/O.
pub enum Stream {
    /// TCP.
    Tcp(tokio_uring::net::TcpStream),
    /// A local (Unix) socket.
    Unix(tokio_uring::net::UnixStream),
}

impl Stream {
    /// Connects over TCP with TCP_NODELAY: requests and replies are small and each waits for
    /// the other.
    pub async fn connect_tcp(addr: SocketAddr) -> io::Result<Stream> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Stream::Tcp(stream))
    }

    /// Connects to a local socket.
    pub async fn connect_unix(path: &std::path::Path) -> io::Result<Stream> {
        Ok(Stream::Unix(
            tokio_uring::net::UnixStream::connect(path).await?,
        ))
    }

    /// Writes all of `buf` and hands it back.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    /// One read appended to `buf`, never growing it past `limit` bytes (so a reply that is
    /// too long shows up as `buf.len() == limit` for the parser to reject). Returns the bytes
    /// read, 0 at EOF or when `buf` is already at the limit.
    pub async fn read_append(
        &self,
        mut buf: Vec<u8>,
        limit: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let want = limit.saturating_sub(len).min(16 * 1024);
        if want == 0 {
            return (Ok(0), buf);
        }
        buf.reserve(want);
        // A slice of the spare capacity: tokio-uring reads into a Vec from its start, and the
        // slice makes the read append instead.
        let slice = buf.slice(len..len + want);
        let (n, slice) = match self {
            Stream::Tcp(s) => s.read(slice).await,
            Stream::Unix(s) => s.read(slice).await,
        };
        (n, slice.into_inner())
    }

    /// Runs `exchange` until `deadline`; `None` if the deadline passed. On timeout the socket
    /// is shut down, which completes the operations the dropped future left in flight so that
    /// the socket closes now rather than when the peer gives up.
    pub async fn run_until<T>(
        &self,
        deadline: Instant,
        exchange: impl Future<Output = T>,
    ) -> Option<T> {
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => Some(result),
            Err(_) => {
                let _ = match self {
                    Stream::Tcp(s) => s.shutdown(Shutdown::Both),
                    Stream::Unix(s) => s.shutdown(Shutdown::Both),
                };
                None
            }
        }
    }
}
