//! The PROXY protocol on the listeners (`listen.proxy_protocol`): a trusted balancer names the
//! client, and the per-address limits and the session log count on that client.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Raw, Server, base_config, have, python};

/// Listeners taking PROXY headers from 127.0.0.1 only, one connection per untrusted address;
/// `trusted` for `relay.trusted_networks`.
fn proxied_config(dir: &std::path::Path, trusted: &str) -> String {
    base_config(
        dir,
        &format!("[limits]\nmax_connections_per_ip = 1\n[relay]\ntrusted_networks = {trusted}\n"),
    )
    .replace("threads = 2", "threads = 1")
    .replace(
        "http = \"\"",
        "http = \"\"\nproxy_protocol = [\"127.0.0.1/32\"]",
    )
}

fn start(trusted: &str) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in_env(
        &dir,
        &proxied_config(&dir, trusted),
        &[("RUST_LOG", "info")],
    );
    (tmp, s)
}

/// A v2 header naming `client:port` (`cmd` 1: PROXY, 0: LOCAL).
fn v2_header(cmd: u8, client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | cmd, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// Asserts that the server closes the connection without writing a byte (end of stream, not
/// this client's own 20 s read timeout).
fn closed_without_a_reply(c: &mut Raw) {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut c.stream, &mut buf).expect("closed by the server");
    assert_eq!(n, 0, "no reply: {:?}", String::from_utf8_lossy(&buf[..n]));
}

/// A client behind the balancer: connects, sends `header`, expects the greeting.
fn behind(s: &Server, header: &[u8]) -> Raw {
    let mut c = Raw::connect(s.addr("smtp"));
    c.send(header);
    let r = c.reply();
    assert!(r.starts_with("220"), "{r}");
    c
}

/// Whether a relay from this session is accepted (RCPT to a domain that is not local).
fn relays(c: &mut Raw) -> String {
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<app@client.example>").starts_with("250"));
    c.cmd("RCPT TO:<someone@elsewhere.example>")
}

#[test]
fn a_balancers_proxy_header_names_the_client_for_limits_relay_and_the_log() {
    let (_tmp, s) = start("[\"10.0.0.0/8\", \"127.0.0.1/32\"]");
    let smtp = s.addr("smtp");

    // Two clients behind the balancer (127.0.0.1): each is counted on its own address.
    let mut first = behind(&s, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    let mut second = Raw::connect(smtp);
    second.send(&v2_header(1, [192, 0, 2, 7], 40001));
    let r = second.reply();
    assert!(
        r.starts_with("421 4.7.0"),
        "the same client again, over v2: {r}"
    );
    let mut other = behind(&s, &v2_header(1, [192, 0, 2, 8], 40002));
    assert!(other.cmd("EHLO client.example").starts_with("250"));
    assert!(other.cmd("QUIT").starts_with("221"));
    let line = s.wait_log("peer=192.0.2.8:40002", 10);
    assert!(line.contains("via=127.0.0.1:"), "{line}");

    // The slot is released when the session ends: the same client is let in again.
    assert!(first.cmd("QUIT").starts_with("221"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Raw::connect(smtp);
        again.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40003 25\r\n");
        if again.reply().starts_with("220") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "192.0.2.7's slot was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Relay rules see the named client, not the (trusted) balancer; a header naming no client
    // keeps the balancer's address but not its trust.
    let mut inside = behind(&s, &v2_header(1, [10, 1, 2, 3], 40004));
    let r = relays(&mut inside);
    assert!(r.starts_with("250"), "10.1.2.3 is trusted: {r}");
    let mut outside = behind(&s, &v2_header(1, [192, 0, 2, 9], 40005));
    let r = relays(&mut outside);
    assert!(r.starts_with("554 5.7.1"), "192.0.2.9 is not: {r}");
    let mut anonymous = behind(&s, &v2_header(0, [10, 1, 2, 3], 40006));
    let r = relays(&mut anonymous);
    assert!(r.starts_with("554 5.7.1"), "no client named, no trust: {r}");
    // ... nor its exemption from the per-address limits.
    let mut more = Raw::connect(smtp);
    more.send(b"PROXY UNKNOWN\r\n");
    let r = more.reply();
    assert!(
        r.starts_with("421 4.7.0"),
        "a second unnamed connection: {r}"
    );
    assert!(anonymous.cmd("QUIT").starts_with("221"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut unknown = loop {
        let mut c = Raw::connect(smtp);
        c.send(b"PROXY UNKNOWN\r\n");
        if c.reply().starts_with("220") {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the unnamed slot was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let r = relays(&mut unknown);
    assert!(
        r.starts_with("554 5.7.1"),
        "v1 UNKNOWN, no trust either: {r}"
    );

    // What the client sent along with the header is answered without waiting for more.
    let mut eager = Raw::connect(smtp);
    let mut bytes = v2_header(1, [192, 0, 2, 10], 40007);
    bytes.extend_from_slice(b"EHLO eager.example\r\n");
    eager.send(&bytes);
    assert!(eager.reply().starts_with("220"));
    let r = eager.reply();
    assert!(r.starts_with("250"), "{r}");

    // A balancer that sends no valid header gets no greeting.
    let mut broken = Raw::connect(smtp);
    broken.send(b"PROXY TCP4 192.0.2.11 nonsense\r\n");
    closed_without_a_reply(&mut broken);
    s.wait_log("without a valid PROXY header", 10);

    // Anyone else is not believed: the header is just a bad command, and the address counted is
    // the connection's own.
    let direct = "127.0.0.2".parse::<IpAddr>().unwrap();
    let mut c = Raw::connect_from(direct, smtp);
    assert!(c.reply().starts_with("220"));
    let r = c.cmd("PROXY TCP4 192.0.2.12 127.0.0.1 40008 25");
    assert!(r.starts_with("500 5.5.1"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    s.wait_log("peer=127.0.0.2:", 10);
}

#[test]
fn implicit_tls_works_behind_a_proxy_header() {
    let (_tmp, s) = start("[\"10.0.0.0/8\"]");
    let header: String = v2_header(1, [192, 0, 2, 30], 40030)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The header and the TLS ClientHello go out in one write, so that the server reads part of
    // the handshake along with the header (memory BIOs let the script build the hello first).
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=20)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname='mx.test')
first = True
def step(call):
    global first
    while True:
        try:
            return call()
        except ssl.SSLWantReadError:
            data = out.read()
            if first:
                data = bytes.fromhex(sys.argv[2]) + data
                first = False
            if data:
                s.sendall(data)
            chunk = s.recv(65536)
            if not chunk:
                sys.exit('closed by the server')
            inc.write(chunk)
step(tls.do_handshake)
print(step(lambda: tls.read(512)).decode().split()[0])
tls.write(b'QUIT\r\n')
s.sendall(out.read())
print(step(lambda: tls.read(512)).decode().split()[0])
"#;
    let (code, out, err) = python(script, &[s.port("submissions").to_string(), header]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["220", "221"]);
    let line = s.wait_log("peer=192.0.2.30:40030", 10);
    assert!(line.contains("tls=true"), "{line}");
}

/// HAProxy in a child process, killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on loopback (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn haproxy_with_proxy_v2_in_front_passes_the_client_address_to_the_log_and_the_limits() {
    if !have("haproxy") {
        ringmta::testkit::skip("haproxy is not installed (apt-get install haproxy)");
        return;
    }
    let (tmp, s) = start("[\"10.0.0.0/8\"]");
    let front = free_port();
    let cfg = tmp.path().join("haproxy.cfg");
    let log = tmp.path().join("haproxy.log");
    // `noreuseport`: HAProxy would otherwise bind with SO_REUSEPORT, and a port another test's
    // server took in the meantime would silently share its connections.
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 64\n  noreuseport\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\nfrontend smtp\n  bind 127.0.0.1:{front}\n  \
             default_backend ringmta\nbackend ringmta\n  server r1 {} send-proxy-v2 source 127.0.0.1\n",
            s.addr("smtp")
        ),
    )
    .unwrap();
    let out = std::fs::File::create(&log).unwrap();
    let mut haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("haproxy starts"),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    // Ready when a client through it is greeted by ringmta.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = haproxy.0.try_wait() {
            panic!(
                "haproxy exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(stream) = std::net::TcpStream::connect(front) {
            let mut probe = Raw::from_stream(stream);
            if probe.reply().starts_with("220") {
                assert!(probe.cmd("QUIT").starts_with("221"));
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no greeting through haproxy within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The real client (smtplib) from 127.0.0.10: its address, not HAProxy's, reaches the log.
    let script = "import smtplib, sys\n\
                  s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), source_address=('127.0.0.10', 0), timeout=30)\n\
                  print(s.ehlo()[0])\n\
                  s.quit()\n";
    let (code, out, err) = python(script, &[front.port().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "250");
    let line = s.wait_log("peer=127.0.0.10:", 10);
    assert!(line.contains("via=127.0.0.1:"), "{line}");

    // The per-address limit counts the clients behind HAProxy one by one.
    let client = "127.0.0.9".parse::<IpAddr>().unwrap();
    let mut held = Raw::connect_from(client, front);
    assert!(held.reply().starts_with("220"));
    let mut again = Raw::connect_from(client, front);
    let r = again.reply();
    assert!(
        r.starts_with("421 4.7.0"),
        "a second connection from 127.0.0.9: {r}"
    );
    let mut other = Raw::connect_from("127.0.0.11".parse().unwrap(), front);
    assert!(other.reply().starts_with("220"), "another client is let in");
    assert!(held.cmd("QUIT").starts_with("221"));
}

#[test]
fn a_balancer_that_stalls_inside_its_header_is_disconnected_without_a_greeting() {
    let (_tmp, s) = start("[\"10.0.0.0/8\"]");
    let mut c = Raw::connect(s.addr("smtp"));
    c.send(b"PROXY TCP4 192.0.2.7 ");
    closed_without_a_reply(&mut c);
    s.wait_log("without a valid PROXY header within 10 s", 5);
}
