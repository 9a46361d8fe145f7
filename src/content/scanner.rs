//! What the scanner clients share: the connection (a [`crate::net::stream::Stream`]: TCP or a
//! local socket, one deadline for the whole exchange with a shutdown on timeout), the error
//! types, and the "need more bytes" status of their incremental parsers.

use std::future::Future;
use std::io;

use tokio::time::Instant;

pub(crate) use crate::net::stream::Stream as ScanConn;

/// Runs a scanner exchange on `conn` until `deadline`; past it the socket is shut down and the
/// exchange is a [`ScanError::Timeout`].
pub(crate) async fn within<T>(
    conn: &ScanConn,
    deadline: Instant,
    exchange: impl Future<Output = Result<T, ScanError>>,
) -> Result<T, ScanError> {
    conn.run_until(deadline, exchange)
        .await
        .unwrap_or(Err(ScanError::Timeout))
}

/// Why a scan gave no verdict. Callers decide whether that tempfails the message or lets it
/// through; nothing here does either.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The scanner did not finish within the deadline (connecting included).
    #[error("scanner timed out")]
    Timeout,
    /// Connecting, reading or writing failed (nothing listening, reset, bad address, ...).
    #[error("scanner i/o: {0}")]
    Io(#[from] io::Error),
    /// The scanner answered, but not with a usable verdict.
    #[error("scanner protocol: {0}")]
    Protocol(#[from] ReplyError),
}

/// A scanner reply that gives no verdict. Text copied from the reply is bounded by the reply
/// size limits and shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// clamd refused the stream as longer than its `StreamMaxLength`.
    #[error("clamd stream size limit exceeded")]
    SizeLimit,
    /// clamd answered `... ERROR` (the text before ` ERROR`).
    #[error("clamd error: {0:?}")]
    ScannerError(String),
    /// A reply that matches no known form.
    #[error("unexpected reply: {0:?}")]
    Unexpected(String),
    /// The reply exceeded its size limit before it was complete.
    #[error("reply longer than {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection closed before the reply was complete.
    #[error("connection closed before the reply was complete")]
    Truncated,
    /// An HTTP status other than 200.
    #[error("http status {status} {reason:?}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The reason phrase, truncated to 100 bytes.
        reason: String,
    },
    /// An HTTP response head or chunked body that does not follow RFC 9112.
    #[error("malformed http response: {0}")]
    MalformedHttp(&'static str),
    /// The body is not the JSON object expected.
    #[error("malformed json reply at line {line} column {column}")]
    MalformedJson {
        /// 1-based line of the error, as serde_json reports it.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// An rspamd action this client does not know.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

/// Result of looking at the bytes received so far: "need more bytes" is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// The reply is complete.
    Complete(T),
    /// More bytes are needed.
    Partial,
}

/// Copies peer text, replacing bytes outside printable ASCII so that it is safe in logs and
/// headers.
pub(crate) fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Fake scanners and the real-daemon launcher, shared by the clamd and rspamd tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::{BufRead, BufReader, Read};
    use std::net::{SocketAddr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A TCP server on 127.0.0.1 that accepts one connection, reads what the client sends
    /// until `reply_after` says the request is complete, writes `reply` (then shuts down its
    /// sending side if `close`), and reports what it read and whether the client closed the
    /// connection within 5 s.
    pub fn fake_server(
        reply: Vec<u8>,
        reply_after: fn(&[u8]) -> bool,
        close: bool,
    ) -> (SocketAddr, mpsc::Receiver<FakeOutcome>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let mut replied = false;
            let mut closed_by_client = false;
            loop {
                if !replied && reply_after(&request) {
                    replied = true;
                    let _ = std::io::Write::write_all(&mut stream, &reply);
                    if close {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                match stream.read(&mut buf) {
                    Ok(0) => {
                        closed_by_client = true;
                        break;
                    }
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            let _ = tx.send(FakeOutcome {
                request,
                closed_by_client,
            });
        });
        (addr, rx)
    }

    /// What a fake server saw.
    pub struct FakeOutcome {
        /// Every byte the client sent.
        pub request: Vec<u8>,
        /// Whether the client closed (or shut down) the connection within 5 s.
        pub closed_by_client: bool,
    }

    /// A loopback port with nothing listening on it.
    pub fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr")
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        /// Creates `ringmta-<tag>-<pid>-<nanos>`.
        pub fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir =
                std::env::temp_dir().join(format!("ringmta-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A daemon started by tests/it/scanners.sh; stopped (SIGTERM to the script, which stops
    /// the daemon's process group) on drop.
    pub struct Scanner {
        child: Child,
        /// The address the script printed, e.g. `unix:/tmp/.../clamd.sock`.
        pub addr: String,
        _dir: TempDir,
    }

    impl Drop for Scanner {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn script() -> Option<PathBuf> {
        let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/scanners.sh");
        // In a crate that includes this file by path, the manifest is elsewhere; file!() is then
        // absolute and points into the real tree.
        let from_source = Path::new(file!())
            .parent()?
            .join("../../tests/it/scanners.sh");
        [from_manifest, from_source]
            .into_iter()
            .find(|p| p.is_file())
    }

    /// Starts `scanners.sh KIND DIR` and waits (up to 180 s) for its address line. `None`, with
    /// a "SKIP: ..." line printed, when the script or the daemon is missing.
    pub fn start_scanner(kind: &str) -> Option<Scanner> {
        let Some(script) = script() else {
            crate::testkit::skip("tests/it/scanners.sh not found");
            return None;
        };
        let dir = TempDir::new(kind);
        let started = Instant::now();
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(kind)
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn scanners.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_default();
        let line = line.trim_end();
        if let Some(reason) = line.strip_prefix("SKIP: ") {
            crate::testkit::skip(reason);
            let _ = child.wait();
            return None;
        }
        let Some(addr) = line
            .strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scanners.sh {kind} printed {line:?} instead of an address");
        };
        println!("{kind} ready at {addr} after {:?}", started.elapsed());
        Some(Scanner {
            addr: addr.to_owned(),
            child,
            _dir: dir,
        })
    }
}
