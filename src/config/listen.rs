//! `[listen]` and `[tls]`: the SMTP listeners with their roles, the HTTP address and where the
//! certificate comes from.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::{RawListen, RawTls};
use super::resolved::Resolver;
use crate::smtp::PortRole;

/// One SMTP listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to bind (port 0 = pick a free port).
    pub addr: SocketAddr,
    /// Its role.
    pub role: PortRole,
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given in `[tls]`.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generated on first start into `spool_dir/tls/`.
    SelfSigned,
}

/// The listeners, the HTTP address (`None`: no HTTP listener) and the certificate source.
pub(super) fn resolve(
    r: &mut Resolver,
    listen: RawListen,
    tls: Option<RawTls>,
) -> (Vec<Listener>, Option<SocketAddr>, TlsSource) {
    let mut listeners = r.addrs(
        "listen.smtp",
        listen.smtp.as_ref(),
        "127.0.0.1:2525",
        PortRole::Relay,
    );
    listeners.extend(r.addrs(
        "listen.submission",
        listen.submission.as_ref(),
        "127.0.0.1:2587",
        PortRole::Submission,
    ));
    listeners.extend(r.addrs(
        "listen.submissions",
        listen.submissions.as_ref(),
        "127.0.0.1:2465",
        PortRole::Submissions,
    ));
    let http = match listen.http.as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
        Some("") => None,
        Some(s) => s.parse().map(Some).unwrap_or_else(|_| {
            r.problem("listen.http", format!("{s:?} is not an ip:port address"));
            None
        }),
    };

    let tls = match tls {
        Some(t) => TlsSource::Files {
            cert: t.cert.into(),
            key: t.key.into(),
        },
        None => TlsSource::SelfSigned,
    };
    (listeners, http, tls)
}

impl Resolver {
    pub(super) fn addrs(
        &mut self,
        key: &str,
        v: Option<&Vec<String>>,
        default: &str,
        role: PortRole,
    ) -> Vec<Listener> {
        let list = match v {
            Some(list) => list.clone(),
            None => vec![default.to_owned()],
        };
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<SocketAddr>() {
                Ok(addr) => out.push(Listener { addr, role }),
                Err(_) => self.problem(
                    format!("{key}[{i}]"),
                    format!("{s:?} is not an ip:port address"),
                ),
            }
        }
        out
    }
}
