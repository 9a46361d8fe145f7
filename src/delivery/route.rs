//! Where mail for a domain goes: static routes first, then DNS MX (RFC 5321 §5.1) with the
//! implicit-MX fallback to A/AAAA, null MX (RFC 7505) and NXDOMAIN as permanent outcomes, and
//! SERVFAIL or timeouts as temporary ones.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::bounce::classify::ConnFailure;
use crate::config::resolved::Route as StaticRoute;

/// One host to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Host name (for logs, the Remote-MTA field and TLS SNI).
    pub name: String,
    /// Addresses to connect to, in order.
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain cannot be routed now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain publishes a null MX: it accepts no mail (RFC 7505 §3). Permanent.
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    /// The domain does not exist. Permanent.
    #[error("domain {0} does not exist (NXDOMAIN)")]
    NxDomain(String),
    /// No address for any host. Permanent when the names do not exist; here treated as retry.
    #[error("no address found for the mail hosts of {0}")]
    NoAddress(String),
    /// A temporary DNS failure (SERVFAIL, network).
    #[error("temporary dns failure for {domain}: {reason}")]
    Temporary {
        /// The domain.
        domain: String,
        /// What the resolver said.
        reason: String,
    },
    /// The DNS lookup timed out.
    #[error("dns lookup for {domain} timed out: {reason}")]
    Timeout {
        /// The domain.
        domain: String,
        /// What the resolver said.
        reason: String,
    },
}

impl RouteError {
    /// The connection-level failure the bounce classifier knows this as.
    pub fn as_failure(&self) -> ConnFailure {
        match self {
            RouteError::NullMx(_) => ConnFailure::DnsNullMx,
            RouteError::NxDomain(_) => ConnFailure::DnsNxDomain,
            RouteError::NoAddress(_) => ConnFailure::DnsNoAddress,
            RouteError::Timeout { .. } => ConnFailure::DnsTimeout,
            RouteError::Temporary { .. } => ConnFailure::DnsServFail,
        }
    }
}

/// Resolves next hops. One per worker thread (the resolver's tasks run on that thread).
pub struct Router {
    routes: Vec<StaticRoute>,
    resolver: TokioResolver,
    smtp_port: u16,
    /// The name servers asked directly when the answer's DNSSEC status matters (DANE): those of
    /// `delivery.nameservers`, or of `/etc/resolv.conf`.
    validating: Vec<SocketAddr>,
    timeout: Duration,
}

/// An answer from the resolver with what it says of its DNSSEC status.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The resolver validated the answer (the AD bit, RFC 4035 §3.2.3): its records, or their
    /// absence, are as the zone's owner signed them. False for an unsigned zone.
    pub secure: bool,
    /// The answer's records of the asked type, in order.
    pub records: Vec<hickory_resolver::proto::rr::Record>,
}

impl Router {
    /// Builds the router: `nameservers` empty means the system resolver.
    pub fn new(
        routes: Vec<StaticRoute>,
        nameservers: &[SocketAddr],
        smtp_port: u16,
    ) -> Result<Router, NetError> {
        Router::with_timeout(routes, nameservers, smtp_port, Duration::from_secs(5))
    }

    /// [`Router::new`] with another timeout per DNS query.
    fn with_timeout(
        routes: Vec<StaticRoute>,
        nameservers: &[SocketAddr],
        smtp_port: u16,
        timeout: Duration,
    ) -> Result<Router, NetError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 2;
        let validating = if nameservers.is_empty() {
            system_name_servers()
        } else {
            nameservers.to_vec()
        };
        let builder = if nameservers.is_empty() {
            Resolver::builder_tokio()?
        } else {
            let servers = nameservers
                .iter()
                .map(|ns| {
                    let mut c = NameServerConfig::udp_and_tcp(ns.ip());
                    for conn in &mut c.connections {
                        conn.port = ns.port();
                    }
                    c
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder.with_options(opts).build()?;
        Ok(Router {
            routes,
            resolver,
            smtp_port,
            validating,
            timeout,
        })
    }

    /// The static route for a domain, if any (exact match, then `*`).
    fn static_route(&self, domain: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.domain == domain)
            .or_else(|| self.routes.iter().find(|r| r.domain == "*"))
            .map(|r| r.next_hop.as_str())
    }

    /// The hosts to try for `domain`, best first.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<NextHop>, RouteError> {
        if let Some(hop) = self.static_route(domain) {
            return self.resolve_static(domain, hop).await;
        }
        if let Some(ip) = address_literal(domain) {
            return Ok(vec![NextHop {
                name: domain.to_owned(),
                addrs: vec![SocketAddr::new(ip, self.smtp_port)],
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut exchanges: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::MX(mx) => {
                        Some((mx.preference, mx.exchange.to_ascii()))
                    }
                    _ => None,
                })
                .collect(),
            Err(e) => match classify_dns(&e) {
                DnsOutcome::NxDomain => return Err(RouteError::NxDomain(domain.to_owned())),
                // RFC 5321 §5.1: no MX records → the domain itself is the implicit MX.
                DnsOutcome::NoRecords => vec![(0, fqdn.clone())],
                DnsOutcome::Temporary { timed_out } => {
                    return Err(DnsTrouble {
                        timed_out,
                        reason: e.to_string(),
                    }
                    .for_domain(domain));
                }
            },
        };
        // RFC 7505 §3: a single MX with the root as exchange means "no mail".
        if exchanges.len() == 1 && (exchanges[0].1 == "." || exchanges[0].1.is_empty()) {
            return Err(RouteError::NullMx(domain.to_owned()));
        }
        exchanges.retain(|(_, e)| e != "." && !e.is_empty());
        exchanges.sort_by_key(|(p, _)| *p);
        let mut hops = Vec::new();
        let mut temporary = None;
        for (_, name) in exchanges {
            match self.lookup_addrs(&name, self.smtp_port).await {
                Ok(addrs) if !addrs.is_empty() => hops.push(NextHop {
                    name: name.trim_end_matches('.').to_owned(),
                    addrs,
                }),
                Ok(_) => {}
                Err(e) => temporary = Some(e),
            }
        }
        if hops.is_empty() {
            return Err(match temporary {
                Some(trouble) => trouble.for_domain(domain),
                None => RouteError::NoAddress(domain.to_owned()),
            });
        }
        Ok(hops)
    }

    async fn resolve_static(&self, domain: &str, hop: &str) -> Result<Vec<NextHop>, RouteError> {
        if let Ok(addr) = hop.parse::<SocketAddr>() {
            return Ok(vec![NextHop {
                name: hop.to_owned(),
                addrs: vec![addr],
            }]);
        }
        let (host, port) = hop.rsplit_once(':').unwrap_or((hop, "25"));
        let port: u16 = port.parse().unwrap_or(25);
        match self.lookup_addrs(host, port).await {
            Ok(addrs) if !addrs.is_empty() => Ok(vec![NextHop {
                name: host.to_owned(),
                addrs,
            }]),
            Ok(_) => Err(RouteError::NoAddress(domain.to_owned())),
            Err(trouble) => Err(trouble.for_domain(domain)),
        }
    }

    /// Whether mail for `domain` goes by a static route or to an address literal (not by MX,
    /// so no MTA-STS policy applies).
    pub fn is_static(&self, domain: &str) -> bool {
        self.static_route(domain).is_some() || address_literal(domain).is_some()
    }

    /// The TXT records of `name` (each record's strings joined), empty when there are none.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) => match classify_dns(&e) {
                DnsOutcome::NxDomain | DnsOutcome::NoRecords => Ok(Vec::new()),
                DnsOutcome::Temporary { .. } => Err(e.to_string()),
            },
        }
    }

    /// The addresses of `host` on `port` (none is an error).
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self.lookup_addrs(host, port).await {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(format!("{host} has no address")),
            Err(e) => Err(format!("looking up {host}: {}", e.reason)),
        }
    }

    /// Asks the name servers for `name`'s `rtype` records with the DO and AD bits set and reports
    /// whether the answer came back authenticated. This trusts the resolver's AD bit, as Postfix
    /// does: the resolver must validate, and the path to it must be trusted (loopback).
    /// NXDOMAIN is an empty answer; SERVFAIL (a bogus signature, an unreachable zone) and
    /// timeouts are errors.
    pub async fn validated(&self, name: &str, rtype: RecordType) -> Result<Validated, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        // from_utf8 takes A-labels as they are and turns U-labels into them (IDN MX hosts).
        let qname = Name::from_utf8(&fqdn).map_err(|e| format!("{fqdn}: {e}"))?;
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.metadata.authentic_data = true;
        query.add_query(Query::query(qname, rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        query.set_edns(edns);
        let mut last = format!("no name server to ask for {fqdn}");
        // Each server twice (a lost datagram is not an answer). Only a server that does not
        // answer, or refuses, sends the question to the next one: an answer (SERVFAIL for a
        // bogus signature included) is final, or a second, non-validating server could
        // replace a validation failure with an unsigned answer.
        for &server in self.validating.iter().flat_map(|s| [s, s]) {
            query.metadata.id = rand::random();
            let wire = query.to_vec().map_err(|e| e.to_string())?;
            let exchanged = tokio::time::timeout(self.timeout, exchange(server, &wire, &query));
            let answer = match exchanged.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    last = format!("{fqdn} {rtype} from {server}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{fqdn} {rtype} from {server}: timed out");
                    continue;
                }
            };
            let code = answer.metadata.response_code;
            if code == ResponseCode::Refused {
                last = format!("{fqdn} {rtype} from {server}: {code}");
                continue;
            }
            if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
                return Err(format!("{fqdn} {rtype} from {server}: {code}"));
            }
            return Ok(Validated {
                secure: answer.metadata.authentic_data,
                records: answer
                    .answers
                    .into_iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect(),
            });
        }
        Err(last)
    }

    /// The name servers DANE's lookups ask (whose AD bit it trusts).
    pub fn validating_servers(&self) -> &[SocketAddr] {
        &self.validating
    }

    async fn lookup_addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsTrouble> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        match self.resolver.lookup_ip(name.as_str()).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            Err(e) => match classify_dns(&e) {
                DnsOutcome::NxDomain | DnsOutcome::NoRecords => Ok(Vec::new()),
                DnsOutcome::Temporary { timed_out } => Err(DnsTrouble {
                    timed_out,
                    reason: e.to_string(),
                }),
            },
        }
    }
}

/// The name servers of `/etc/resolv.conf` (none when it cannot be read).
fn system_name_servers() -> Vec<SocketAddr> {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, _)) => config
            .name_servers
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, ns.connections.first().map_or(53, |c| c.port)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading /etc/resolv.conf");
            Vec::new()
        }
    }
}

/// Whether `answer` answers `query`: its id, a response to a query, the same question
/// (RFC 5452 §9.1).
fn answers(answer: &Message, query: &Message) -> bool {
    answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.metadata.op_code == OpCode::Query
        && answer.queries.len() == 1
        && query.queries.first().is_some_and(|q| {
            let a = &answer.queries[0];
            a.name() == q.name()
                && a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
        })
}

/// One query to one server: over UDP, then over TCP when the answer is truncated.
async fn exchange(server: SocketAddr, wire: &[u8], query: &Message) -> Result<Message, String> {
    let any: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let udp = tokio::net::UdpSocket::bind(any)
        .await
        .map_err(|e| e.to_string())?;
    udp.connect(server).await.map_err(|e| e.to_string())?;
    udp.send(wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    // Datagrams that are not the answer (another id, garbage) are skipped; the caller's
    // timeout bounds the wait.
    let answer = loop {
        let n = udp.recv(&mut buf).await.map_err(|e| e.to_string())?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if answers(&m, query) => break m,
            _ => continue,
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
    framed.extend_from_slice(wire);
    tcp.write_all(&framed).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&body).map_err(|e| e.to_string())?;
    if !answers(&answer, query) {
        return Err("the answer over tcp is not for the question".to_owned());
    }
    Ok(answer)
}

enum DnsOutcome {
    NxDomain,
    NoRecords,
    Temporary { timed_out: bool },
}

/// A lookup that failed for now.
struct DnsTrouble {
    timed_out: bool,
    reason: String,
}

impl DnsTrouble {
    fn for_domain(self, domain: &str) -> RouteError {
        let domain = domain.to_owned();
        let reason = self.reason;
        if self.timed_out {
            RouteError::Timeout { domain, reason }
        } else {
            RouteError::Temporary { domain, reason }
        }
    }
}

fn classify_dns(e: &NetError) -> DnsOutcome {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            DnsOutcome::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => DnsOutcome::NoRecords,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => DnsOutcome::NxDomain,
        NetError::Timeout => DnsOutcome::Temporary { timed_out: true },
        NetError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            DnsOutcome::Temporary { timed_out: true }
        }
        _ => DnsOutcome::Temporary { timed_out: false },
    }
}

/// `[1.2.3.4]` or `[IPv6:...]` domains (RFC 5321 §4.1.3).
fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name server that takes the queries and never answers: the route error is the timeout
    /// variant, which the classifier knows as a DNS timeout (not a SERVFAIL).
    #[test]
    fn a_silent_name_server_is_a_dns_timeout() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        // The TCP side on the same port accepts and stays silent too (it may not be free: then
        // the resolver's TCP attempt is refused, which is not what is tested here).
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            let ns = SocketAddr::from(([127, 0, 0, 1], port));
            let router =
                Router::with_timeout(Vec::new(), &[ns], 25, Duration::from_millis(200)).unwrap();
            router.resolve("silent.example").await.unwrap_err()
        });
        drop((udp, tcp));
        assert!(matches!(err, RouteError::Timeout { .. }), "{err:?}");
        assert_eq!(err.as_failure(), ConnFailure::DnsTimeout);
    }

    /// A name server on loopback that answers each query with what `reply` makes of it (or
    /// nothing), for two seconds.
    fn fake_server(reply: impl Fn(&Message) -> Option<Message> + Send + 'static) -> SocketAddr {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let addr = udp.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(answer) = reply(&query) {
                    let _ = udp.send_to(&answer.to_vec().unwrap(), from);
                }
            }
        });
        addr
    }

    /// The answer to `query` with `code`, the AD bit `ad`, and one A record for its name.
    fn answer(query: &Message, code: ResponseCode, ad: bool) -> Message {
        let mut m = Message::response(query.metadata.id, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.authentic_data = ad;
        m.add_query(query.queries[0].clone());
        if code == ResponseCode::NoError {
            m.add_answer(hickory_resolver::proto::rr::Record::from_rdata(
                query.queries[0].name().clone(),
                60,
                hickory_resolver::proto::rr::RData::A(std::net::Ipv4Addr::LOCALHOST.into()),
            ));
        }
        m
    }

    fn validated_with(servers: &[SocketAddr], name: &str) -> Result<Validated, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let router =
                Router::with_timeout(Vec::new(), servers, 25, Duration::from_millis(300)).unwrap();
            router.validated(name, RecordType::A).await
        })
    }

    /// DANE's lookups trust the AD bit, so only silence or a refusal may send the question to
    /// the next server: a SERVFAIL (a bogus signature) is final, or an unvalidated answer from
    /// a second resolver would stand in for it.
    #[test]
    fn a_validation_failure_is_final_and_only_silence_moves_to_the_next_server() {
        let good = fake_server(|q| Some(answer(q, ResponseCode::NoError, true)));
        let servfail = fake_server(|q| Some(answer(q, ResponseCode::ServFail, false)));
        let err = validated_with(&[servfail, good], "mx.example.test").unwrap_err();
        assert!(err.contains(&servfail.to_string()), "{err}");
        let silent = fake_server(|_| None);
        let refused = fake_server(|q| Some(answer(q, ResponseCode::Refused, false)));
        let ok = validated_with(&[silent, refused, good], "mx.example.test").unwrap();
        assert!(ok.secure);
        assert_eq!(ok.records.len(), 1);
        // IDN host names are asked in their A-label form.
        let ok = validated_with(&[good], "mx.bücher.test").unwrap();
        assert_eq!(
            ok.records[0].name.to_ascii(),
            "mx.xn--bcher-kva.test.",
            "{ok:?}"
        );
    }

    /// A datagram that is not the answer to the question (a query, another name) is skipped.
    #[test]
    fn only_an_answer_to_the_question_is_taken() {
        let confused = fake_server(|q| {
            let mut wrong = answer(q, ResponseCode::NoError, true);
            wrong.queries[0].set_name(Name::from_ascii("other.test.").unwrap());
            Some(wrong)
        });
        let echo = fake_server(|q| Some(q.clone()));
        let err = validated_with(&[confused, echo], "mx.example.test").unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
