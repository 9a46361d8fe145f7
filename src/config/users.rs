//! `[[users]]` and `[relay]`: who may authenticate, with which senders, and which networks may
//! relay without authenticating.

use std::net::IpAddr;

use super::raw::RawUser;
use super::resolved::Resolver;

/// A CIDR block such as `127.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this block. IPv4-mapped IPv6 addresses match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How a user's password is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// argon2 PHC string.
    Argon2(String),
    /// Plaintext from the config (warned about at start).
    Plain(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Argon2(_) => f.write_str("Argon2(..)"),
            Secret::Plain(_) => f.write_str("Plain(..)"),
        }
    }
}

/// One user allowed to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub username: String,
    /// Password check.
    pub secret: Secret,
    /// Allowed envelope senders (patterns, see `smtp::SenderPattern`).
    pub allowed_senders: Vec<String>,
    /// The egress pool this user's mail leaves from (checked against `[[egress.pools]]`).
    pub egress_pool: Option<String>,
    /// How long this user's mail may stay queued before it fails as expired (a message's own
    /// deadline, if shorter, wins); `None`: `delivery.max_queue_lifetime`.
    pub max_queue_lifetime: Option<std::time::Duration>,
    /// NOTIFY for this user's recipients given none (`users[].notify`).
    pub notify: Option<crate::smtp::Notify>,
}

/// `relay.trusted_networks`, loopback when not given.
pub(super) fn trusted_networks(r: &mut Resolver, trusted_raw: Option<Vec<String>>) -> Vec<Cidr> {
    let trusted_raw = trusted_raw.unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
    cidrs(r, "relay.trusted_networks", &trusted_raw)
}

/// A list of CIDR blocks under `key`; each one that does not parse is a problem.
pub(super) fn cidrs(r: &mut Resolver, key: &str, raw: &[String]) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        match Cidr::parse(s) {
            Some(c) => out.push(c),
            None => r.problem(format!("{key}[{i}]"), format!("{s:?} is not a CIDR block")),
        }
    }
    out
}

/// The `[[users]]` entries.
pub(super) fn resolve(r: &mut Resolver, users: Vec<RawUser>) -> Vec<User> {
    let mut out = Vec::new();
    for (i, u) in users.into_iter().enumerate() {
        let key = format!("users[{i}]");
        if u.username.is_empty() {
            r.problem(format!("{key}.username"), "must not be empty");
        }
        let secret = match (u.password_hash, u.password) {
            (Some(h), None) => {
                if !h.starts_with("$argon2") {
                    r.problem(
                        format!("{key}.password_hash"),
                        "not an argon2 PHC string (use `ringmta hash-password`)",
                    );
                }
                Secret::Argon2(h)
            }
            (None, Some(p)) => Secret::Plain(p),
            (Some(_), Some(_)) => {
                r.problem(&key, "give password_hash or password, not both");
                Secret::Plain(String::new())
            }
            (None, None) => {
                r.problem(&key, "needs password_hash (or password)");
                Secret::Plain(String::new())
            }
        };
        let allowed_senders = u
            .allowed_senders
            .unwrap_or_else(|| vec![u.username.clone()]);
        for (j, s) in allowed_senders.iter().enumerate() {
            if !is_sender_pattern(s) {
                r.problem(
                    format!("{key}.allowed_senders[{j}]"),
                    format!("{s:?} is not an address, \"*@domain\" or \"*\""),
                );
            }
        }
        let max_queue_lifetime = u.max_queue_lifetime.as_ref().map(|v| {
            let key = format!("{key}.max_queue_lifetime");
            let d = r.duration(&key, Some(v), std::time::Duration::ZERO);
            if d.is_zero() {
                r.problem(key, "must be longer than 0s");
            }
            d
        });
        let notify = u.notify.as_ref().map(|words| {
            let key = format!("{key}.notify");
            let mut n = crate::smtp::Notify::default();
            for w in words {
                match w.to_ascii_lowercase().as_str() {
                    "success" => n.success = true,
                    "failure" => n.failure = true,
                    "delay" => n.delay = true,
                    "never" => n.never = true,
                    _ => r.problem(
                        &key,
                        format!("{w:?} is not \"success\", \"failure\", \"delay\" or \"never\""),
                    ),
                }
            }
            if !n.given() || (n.never && (n.success || n.failure || n.delay)) {
                r.problem(
                    &key,
                    "give \"never\" alone, or some of success, failure, delay",
                );
            }
            n
        });
        out.push(User {
            username: u.username,
            secret,
            allowed_senders,
            egress_pool: u.egress_pool,
            max_queue_lifetime,
            notify,
        });
    }
    out
}

fn is_sender_pattern(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('*')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}
