//! The PROXY protocol (versions 1 and 2, as HAProxy specifies them): the header a load balancer
//! sends first on a connection it relays, naming the client it came from.
//!
//! Parsing is pure: [`parse`] looks at the bytes received so far and says whether they hold a
//! complete header, need more, or are not one. Reading them is the accept loop's job
//! (`accept.rs`), and only for peers in `listen.proxy_protocol`: a header from anyone else is
//! never read as one (it would let any client choose the address its limits are counted on).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The longest version 2 address block and TLVs taken (HAProxy's own are a few hundred bytes;
/// the 16-bit length field would allow 64 KiB per waiting connection).
const V2_MAX_BODY: usize = 4096;

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: the client's address and the address it connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// Where the client connected (the balancer's frontend).
        destination: SocketAddr,
    },
    /// The balancer speaking for itself (a health check: v2 `LOCAL`), or a client it cannot
    /// name (v1 `UNKNOWN`, v2 `UNSPEC`): the connection's own address stands.
    Local,
}

/// The bytes received so far, as a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not complete yet: read more.
    Incomplete,
    /// A complete header of `len` bytes; what follows belongs to the relayed protocol.
    Complete(Header, usize),
}

/// Why the bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither signature.
    #[error("no PROXY protocol header")]
    NotProxy,
    /// A version 1 header without its CRLF within 107 bytes.
    #[error("PROXY v1 header longer than 107 bytes")]
    TooLong,
    /// A malformed version 1 header.
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    /// A malformed version 2 header.
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let rest = &buf[6..end];
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        // The rest of the line is to be ignored, whatever its bytes.
        return Ok(Parsed::Complete(Header::Local, end + 2));
    }
    let line = std::str::from_utf8(rest).map_err(|_| ProxyError::V1("not ASCII"))?;
    let mut f = line.split(' ');
    let proto = f.next().unwrap_or("");
    let fields: Vec<&str> = f.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1("expected 4 fields after the protocol"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip = match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
        };
        ip.map_err(|_| ProxyError::V1("bad address"))
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        // No sign, no leading zeros: the specification's form, and nothing else.
        if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
            return Err(ProxyError::V1("bad port"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::V1("bad port"));
        }
        s.parse().map_err(|_| ProxyError::V1("bad port"))
    };
    let header = Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    Ok(Parsed::Complete(header, end + 2))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let known = matches!((ver_cmd & 0x0f, family), (0, _) | (1, 0x00 | 0x11 | 0x21));
    if !known {
        return Err(ProxyError::V2(
            "unknown command, or not a TCP connection (UDP and unix sockets are not taken)",
        ));
    }
    if len > V2_MAX_BODY {
        return Err(ProxyError::V2("longer than 4 KiB"));
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..total];
    let header = match (ver_cmd & 0x0f, family) {
        // LOCAL: whatever the address block says, the connection is the balancer's own.
        (0, _) => Header::Local,
        (1, 0x00) => Header::Local,
        (1, 0x11) => {
            let a = body
                .get(..12)
                .ok_or(ProxyError::V2("short IPv4 address block"))?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        (1, 0x21) => {
            let a = body
                .get(..36)
                .ok_or(ProxyError::V2("short IPv6 address block"))?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => unreachable!("checked above"),
    };
    // Type-length-value fields after the addresses (ALPN, authority, TLS facts) are skipped.
    Ok(Parsed::Complete(header, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn version_1_headers_name_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Complete(
                proxied("192.0.2.7:40000", "198.51.100.1:25"),
                44
            ))
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Complete(
                proxied("[2001:db8::7]:40000", "[2001:db8::1]:587"),
                h.len()
            ))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 whatever\r\n"),
            Ok(Parsed::Complete(Header::Local, 32))
        );
    }

    #[test]
    fn version_2_headers_name_the_client_and_skip_tlvs() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // an ALPN TLV
        let mut h = v2(1, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // what follows: a TLS ClientHello
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete(
                proxied("192.0.2.7:40000", "198.51.100.1:25"),
                len
            ))
        );
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0x9c, 0x40, 0x00, 0x19]);
        assert_eq!(
            parse(&v2(1, 0x21, &body)),
            Ok(Parsed::Complete(
                proxied("[2001:db8::7]:40000", "[2001:db8::1]:25"),
                52
            ))
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Ok(Parsed::Complete(Header::Local, 16))
        );
    }

    #[test]
    fn partial_headers_ask_for_more() {
        let full = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Ok(Parsed::Incomplete), "v2, {n} bytes");
        }
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n";
        for n in 0..v1.len() {
            assert_eq!(parse(&v1[..n]), Ok(Parsed::Incomplete), "v1, {n} bytes");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        assert_eq!(parse(b"EHLO client\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
        assert_eq!(parse(&[b'A'; 200][..]), Err(ProxyError::NotProxy));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(120, b'1');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 040000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +4 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 25\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::V2(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyError::V2(_))
        ));
        assert!(matches!(
            parse(&v2(5, 0x11, &[0; 12])),
            Err(ProxyError::V2(_))
        ));
        let mut v3 = v2(1, 0x11, &[0; 12]);
        v3[12] = 0x31;
        assert!(matches!(parse(&v3), Err(ProxyError::V2(_))));
    }

    #[test]
    fn edge_cases_of_the_specification() {
        // LOCAL keeps the connection's address whatever its address block says.
        assert_eq!(
            parse(&v2(0, 0x11, &[0; 12])),
            Ok(Parsed::Complete(Header::Local, 28))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Complete(Header::Local, 15))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN \xff\xfe\r\n"),
            Ok(Parsed::Complete(Header::Local, 18))
        );
        // The longest v1 header the specification allows (107 bytes) is taken; one byte more is
        // not.
        let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), 104);
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(105, b'x');
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse(&h), Ok(Parsed::Complete(Header::Local, 107)));
        h.insert(20, b'x');
        assert_eq!(parse(&h), Err(ProxyError::TooLong));
        assert!(matches!(parse(longest), Ok(Parsed::Complete(_, 104))));
        // An IPv4-mapped source is returned as sent (the accept loop makes it IPv4).
        assert_eq!(
            parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 25\r\n"),
            Ok(Parsed::Complete(
                proxied("[::ffff:192.0.2.7]:1", "[::1]:25"),
                38
            ))
        );
        // A v2 header declaring more than 4 KiB, or a family not taken, is refused at once.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]);
        assert!(matches!(parse(&big), Err(ProxyError::V2(_))));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
        assert!(matches!(parse(&unix), Err(ProxyError::V2(_))));
    }

    /// A valid header of either version, what it says, and its bytes.
    fn any_header() -> impl Strategy<Value = (Header, Vec<u8>)> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let v6 = (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
        );
        prop_oneof![
            v4.prop_map(|(s, d, sp, dp)| {
                let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
                let text = format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n");
                let h = Header::Proxied {
                    source: SocketAddr::new(s.into(), sp),
                    destination: SocketAddr::new(d.into(), dp),
                };
                (h, text.into_bytes())
            }),
            (v6, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |((s, d, sp, dp), tlvs)| {
                    let mut body = s.to_vec();
                    body.extend_from_slice(&d);
                    body.extend_from_slice(&sp.to_be_bytes());
                    body.extend_from_slice(&dp.to_be_bytes());
                    body.extend_from_slice(&tlvs);
                    let h = Header::Proxied {
                        source: SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                        destination: SocketAddr::new(Ipv6Addr::from(d).into(), dp),
                    };
                    (h, v2(1, 0x21, &body))
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn a_valid_header_reads_back_whatever_follows_and_every_prefix_asks_for_more(
            (header, bytes) in any_header(),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut input = bytes.clone();
            input.extend_from_slice(&after);
            prop_assert_eq!(parse(&input), Ok(Parsed::Complete(header, bytes.len())));
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse(&input[..cut]), Ok(Parsed::Incomplete));
            }
        }

        #[test]
        fn any_bytes_parse_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            v1 in any::<bool>(),
        ) {
            let mut input = if v1 { b"PROXY ".to_vec() } else { V2_SIGNATURE.to_vec() };
            input.extend_from_slice(&bytes);
            for buf in [&bytes[..], &input[..]] {
                if let Ok(Parsed::Complete(_, len)) = parse(buf) {
                    prop_assert!(len <= buf.len());
                }
            }
        }
    }
}
