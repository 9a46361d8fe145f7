//! A TCP stream on io_uring, optionally wrapped in rustls: the seam between the runtime and the
//! protocols.
//!
//! tokio-uring's operations take buffers by value: a buffer belongs to the kernel while an
//! operation is in flight and comes back with the result. Reads are split in two so that a
//! pending read never borrows the TLS state: `read_raw` is a plain socket read that may stay in
//! flight across a timer or shutdown wake-up, and `decode` turns the bytes it returned into
//! plaintext. Only this folder owns sockets; outside it, tokio-uring is used only as the
//! runtime (spawning tasks and timers in `worker` and `delivery`, and the group commit's
//! fdatasync in `worker`).

use std::future::Future;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use tokio_uring::net::TcpStream;

/// Size of one socket read while a message body is expected.
pub const READ_CHUNK: usize = 16 * 1024;
/// Size of one socket read between message bodies: a few pipelined command lines. An idle
/// session's pending read holds a buffer this big, so it sets the floor of memory per
/// connection (`loadtest/conn-memory.sh`).
pub const COMMAND_READ_CHUNK: usize = 2 * 1024;

/// A connection's byte transport.
pub struct Transport {
    stream: Rc<TcpStream>,
    tls: Option<Box<rustls::Connection>>,
    /// Ciphertext waiting to be written; reused between writes.
    tls_out: Vec<u8>,
}

impl Transport {
    /// Wraps an accepted stream (TCP_NODELAY is set here: without it small replies wait on
    /// delayed ACKs and TLS handshakes crawl).
    pub fn new(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Transport {
            stream: Rc::new(stream),
            tls: None,
            tls_out: Vec::new(),
        }
    }

    /// Whether the peer has closed the connection, or sent bytes nobody asked for, while it was
    /// idle ([`crate::net::peek::peer_closed`]).
    pub fn peer_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        crate::net::peek::peer_closed(self.stream.as_raw_fd())
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS state once TLS is active (version and cipher for the Received header).
    pub fn tls(&self) -> Option<&rustls::CommonState> {
        self.tls.as_deref().map(|c| &**c)
    }

    /// Connects to `addr` with TCP_NODELAY.
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Transport> {
        Ok(Transport::new(TcpStream::connect(addr).await?))
    }

    /// Connects to `addr` from the local address `local` (an egress source). tokio-uring cannot
    /// bind before connecting, so the connect runs on the runtime's epoll reactor and the
    /// connected socket is then handed to io_uring.
    pub async fn connect_from(
        addr: std::net::SocketAddr,
        local: std::net::IpAddr,
    ) -> io::Result<Transport> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        let stream = socket.connect(addr).await?.into_std()?;
        Ok(Transport::new(TcpStream::from_std(stream)))
    }

    /// A socket read of raw bytes appended to `buf`'s spare capacity. The returned future owns
    /// only the stream handle and the buffer, so it can stay pending while the caller does
    /// other work.
    pub fn read_raw(
        &self,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static {
        self.read_raw_sized(buf, READ_CHUNK)
    }

    /// As [`Self::read_raw`], making room for at least a quarter of `chunk` bytes (reserving
    /// `chunk` when there is less).
    pub fn read_raw_sized(
        &self,
        mut buf: Vec<u8>,
        chunk: usize,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static {
        let stream = Rc::clone(&self.stream);
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        async move {
            // tokio-uring reads into a Vec from its start; read into the uninitialised tail
            // instead so that bytes already in `buf` are kept.
            use tokio_uring::buf::BoundedBuf;
            let len = buf.len();
            if len == 0 {
                return stream.read(buf).await;
            }
            let (res, slice) = stream.read(buf.slice(len..)).await;
            (res, slice.into_inner())
        }
    }

    /// Turns raw bytes from `read_raw` into plaintext appended to `plain`. Without TLS the raw
    /// bytes are the plaintext and are moved, not copied. With TLS, plaintext that rustls already
    /// holds (for example data that arrived with the handshake) is drained even when `raw` is
    /// empty.
    pub async fn decode(&mut self, raw: &mut Vec<u8>, plain: &mut Vec<u8>) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            if plain.is_empty() {
                std::mem::swap(raw, plain);
            } else {
                plain.extend_from_slice(raw);
                raw.clear();
            }
            return Ok(());
        };
        let mut input = &raw[..];
        while !input.is_empty() {
            tls.read_tls(&mut input)?;
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        raw.clear();
        // Straight into `plain`: no bounce buffer, which (alive across the await below) would
        // also have made every session's future 16 KiB larger. On WouldBlock, what was read
        // is kept in `plain`.
        match tls.reader().read_to_end(plain) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Key updates and alerts may need to be answered.
        self.flush_tls().await
    }

    /// Writes all of `data` (through TLS when active). Returns the buffer for reuse.
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if self.tls.is_some() {
            // rustls buffers a bounded amount of plaintext (64 KiB by default): feed it in pieces
            // and flush between them.
            let mut off = 0;
            while off < data.len() {
                let written = match self.tls.as_deref_mut() {
                    Some(tls) => tls.writer().write(&data[off..]),
                    None => Err(io::Error::other("tls state vanished")),
                };
                match written {
                    Ok(n) => off += n,
                    Err(e) => return (Err(e), data),
                }
                if let Err(e) = self.flush_tls().await {
                    return (Err(e), data);
                }
            }
            return (Ok(()), data);
        }
        let (res, buf) = self.stream.write_all(data).await;
        (res, buf)
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            let mut out = std::mem::take(&mut self.tls_out);
            out.clear();
            tls.write_tls(&mut out)?;
            let (res, buf) = self.stream.write_all(out).await;
            self.tls_out = buf;
            res?;
        }
        Ok(())
    }

    /// Runs a server-side TLS handshake on this stream (implicit TLS or after STARTTLS).
    /// `pending` holds raw bytes already read from the socket that belong to the handshake.
    pub async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        pending: Vec<u8>,
    ) -> io::Result<()> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        self.handshake(rustls::Connection::Server(conn), pending)
            .await
    }

    /// Runs a client-side TLS handshake (outbound STARTTLS or implicit TLS).
    pub async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        self.handshake(rustls::Connection::Client(conn), Vec::new())
            .await
    }

    async fn handshake(&mut self, conn: rustls::Connection, pending: Vec<u8>) -> io::Result<()> {
        self.tls = Some(Box::new(conn));
        let mut raw = pending;
        loop {
            // Invariant: set at the top of this function and never cleared during it.
            let tls = self.tls.as_deref_mut().expect("set above");
            let mut input = &raw[..];
            while !input.is_empty() {
                tls.read_tls(&mut input)?;
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            raw.clear();
            let handshaking = tls.is_handshaking();
            self.flush_tls().await?;
            if !handshaking {
                return Ok(());
            }
            let (res, buf) = self.read_raw(raw).await;
            raw = buf;
            if res? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during tls handshake",
                ));
            }
        }
    }

    /// Best-effort orderly close: TLS close_notify, then shutdown of both directions so that an
    /// abandoned in-flight read completes and the descriptor is released.
    pub async fn close(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = self.flush_tls().await;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
