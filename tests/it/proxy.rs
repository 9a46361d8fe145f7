//! The PROXY protocol on the listeners (`listen.proxy_protocol`): a trusted balancer names the
//! client, and the per-address limits and the session log count on that client.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Raw, Server, base_config, have, python};

/// Listeners taking PROXY headers from 127.0.0.1 only, one connection per untrusted address.
fn proxied_config(dir: &std::path::Path) -> String {
    base_config(
        dir,
        "[limits]\nmax_connections_per_ip = 1\n[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    )
    .replace("threads = 2", "threads = 1")
    .replace(
        "http = \"\"",
        "http = \"\"\nproxy_protocol = [\"127.0.0.1/32\"]",
    )
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

#[test]
fn a_balancers_proxy_header_names_the_client_for_limits_and_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in_env(&dir, &proxied_config(&dir), &[("RUST_LOG", "info")]);
    let smtp = s.addr("smtp");

    // Two clients behind the balancer (127.0.0.1): each is counted on its own address.
    let mut first = Raw::connect(smtp);
    first.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    let r = first.reply();
    assert!(r.starts_with("220"), "{r}");
    let mut second = Raw::connect(smtp);
    second.send(&v2_header([192, 0, 2, 7], 40001));
    let r = second.reply();
    assert!(
        r.starts_with("421 4.7.0"),
        "the same client again, over v2: {r}"
    );
    let mut other = Raw::connect(smtp);
    other.send(&v2_header([192, 0, 2, 8], 40002));
    assert!(other.reply().starts_with("220"));
    assert!(other.cmd("EHLO client.example").starts_with("250"));
    assert!(other.cmd("QUIT").starts_with("221"));
    let line = s.wait_log("peer=192.0.2.8:40002", 10);
    assert!(line.contains("via=127.0.0.1:"), "{line}");

    // A balancer that sends no valid header gets no greeting.
    let mut broken = Raw::connect(smtp);
    broken.send(b"PROXY TCP4 192.0.2.9 nonsense\r\n");
    assert_eq!(broken.reply(), "", "closed without a reply");
    s.wait_log("without a valid PROXY header", 10);

    // Anyone else is not believed: the header is just a bad command, and the address counted is
    // the connection's own.
    let direct = "127.0.0.2".parse::<IpAddr>().unwrap();
    let mut c = Raw::connect_from(direct, smtp);
    assert!(c.reply().starts_with("220"));
    let r = c.cmd("PROXY TCP4 192.0.2.10 127.0.0.1 40003 25");
    assert!(r.starts_with("500 5.5.1"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    s.wait_log("peer=127.0.0.2:", 10);
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
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in_env(&dir, &proxied_config(&dir), &[("RUST_LOG", "info")]);
    let front = free_port();
    let cfg = tmp.path().join("haproxy.cfg");
    let mut f = std::fs::File::create(&cfg).unwrap();
    write!(
        f,
        "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\nfrontend smtp\n  bind 127.0.0.1:{front}\n  default_backend ringmta\n\
         backend ringmta\n  server r1 {} send-proxy-v2 source 127.0.0.1\n",
        s.addr("smtp")
    )
    .unwrap();
    drop(f);
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .spawn()
            .expect("haproxy starts"),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(front).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen within 10 s"
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
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in_env(&dir, &proxied_config(&dir), &[("RUST_LOG", "info")]);
    let mut c = Raw::connect(s.addr("smtp"));
    c.send(b"PROXY TCP4 192.0.2.7 ");
    // The server closes (end of stream, not this client's own 20 s read timeout) and says nothing.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut c.stream, &mut buf).expect("closed by the server");
    assert_eq!(
        n,
        0,
        "no greeting: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.wait_log("no PROXY header within 10 s", 5);
    // The slot is not held: the next client behind the balancer is served.
    let mut next = Raw::connect(s.addr("smtp"));
    next.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    assert!(next.reply().starts_with("220"));
}
