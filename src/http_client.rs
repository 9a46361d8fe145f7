//! A small blocking HTTP/1.1 client for the few requests ringmta makes itself (MTA-STS policy
//! fetches, webhook posts), run on threads of their own, never on a worker core: one request
//! per connection, over TLS verified with a given configuration for `https`, with a timeout per
//! step and a bound on the response. The response is parsed by `content::http1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::content::http1::{MAX_HEAD, parse_response};
use crate::content::scanner::{ReplyError, Status};

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `https` (else plain `http`).
    pub https: bool,
    /// Host name (or address) for the `Host` header and the certificate check.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parses `http://host[:port]/path` or `https://…`.
    pub fn parse(url: &str) -> Option<Target> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h.to_owned(), p.parse().ok()?)
            }
            _ => (authority.to_owned(), default),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        (!host.is_empty()).then(|| Target {
            https,
            host,
            port,
            path: path.to_owned(),
        })
    }
}

/// A request: method, extra header lines (without CRLF), body.
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// Extra header fields, `Name: value`.
    pub headers: &'a [String],
    /// The body (`Content-Length` is set for it when not empty or when posting).
    pub body: &'a [u8],
}

/// What came back: a 200's body, or why not (the HTTP status among others).
pub type Outcome = Result<Vec<u8>, String>;

/// Sends `request` to `target` at the first of `addrs` that answers (the system resolver's
/// addresses of the host when `addrs` is empty), and returns the body of a `200` reply of at
/// most `max_body` bytes (any other 2xx: an empty body, as it has none to give). Any other
/// status is an error naming it.
pub fn send(
    target: &Target,
    addrs: &[SocketAddr],
    request: &Request<'_>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body: usize,
) -> Outcome {
    let resolved: Vec<SocketAddr> = if addrs.is_empty() {
        (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", target.host))?
            .collect()
    } else {
        addrs.to_vec()
    };
    let mut last = format!("no address for {}", target.host);
    for addr in resolved {
        match send_to(target, addr, request, tls, timeout, max_body) {
            Ok(body) => return Ok(body),
            Err(e) => last = format!("{} ({addr}): {e}", target.host),
        }
    }
    Err(last)
}

fn send_to(
    target: &Target,
    addr: SocketAddr,
    request: &Request<'_>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body: usize,
) -> Outcome {
    let deadline = Instant::now() + timeout * 3;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringmta\r\nConnection: close\r\n",
        request.method, target.path, target.host
    );
    for h in request.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !request.body.is_empty() || request.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    }
    head.push_str("\r\n");
    let mut stream: Box<dyn ReadWrite> = if target.https {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(tls), name).map_err(|e| e.to_string())?;
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(request.body))
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        let eof = match stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                false
            }
            // A server that closes without TLS close_notify has still sent its whole reply.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => true,
            Err(e) => return Err(e.to_string()),
        };
        if buf.len() > max_body + MAX_HEAD {
            return Err(format!("reply longer than {max_body} bytes"));
        }
        match parse_response(&buf, eof) {
            Ok(Status::Complete(body)) => return Ok(body.into_owned()),
            Ok(Status::Partial) if eof => return Err("connection closed early".into()),
            Ok(Status::Partial) => {}
            // 202 Accepted, 204 No Content…: what webhook receivers answer.
            Err(ReplyError::HttpStatus { status, .. }) if (200..300).contains(&status) => {
                return Ok(Vec::new());
            }
            Err(ReplyError::HttpStatus { status, .. }) => return Err(format!("HTTP {status}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://hooks.example.com/ringmta?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/ringmta?x=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (false, 8080, "/"));
        let t = Target::parse("http://[::1]:9/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert!(Target::parse("ftp://x").is_none());
        assert!(Target::parse("http://host:notaport/").is_none());
    }
}
