//! Whether the peer of an idle connection has closed it or spoken out of turn, without reading
//! anything: one non-blocking `recv(MSG_PEEK)`. One of the few modules with `unsafe` code (see
//! docs/architecture.md): the call takes a raw descriptor.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// True when the socket `fd` has reached end of file, has bytes waiting (an SMTP client that has
/// sent nothing expects none: a `421` or a TLS alert means the server is closing) or has an error
/// pending; false when it is open with nothing to read. Reads nothing: the bytes stay queued.
pub fn peer_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `byte` is a valid, writable buffer of the one byte passed as its length; recv with
    // MSG_PEEK | MSG_DONTWAIT neither blocks nor consumes data, and a stale or invalid `fd` only
    // makes it fail (EBADF), which is reported as closed.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return !matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN | libc::EINTR) // EWOULDBLOCK is EAGAIN on Linux
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn open_quiet_speaking_and_closed_peers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(!peer_closed(client.as_raw_fd()), "open and quiet");
        server.write_all(b"421 4.4.2 idle too long\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(peer_closed(client.as_raw_fd()), "spoke out of turn");
        // Peeking left the bytes where they were.
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut &client, &mut buf).unwrap();
        assert_eq!(&buf, b"421");
        let (client2, mut server2) = {
            let c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            (c, listener.accept().unwrap().0)
        };
        server2.flush().unwrap();
        drop(server2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(peer_closed(client2.as_raw_fd()), "closed by the peer");
    }
}
