//! `[[egress.sources]]` and `[[egress.pools]]`: the local addresses delivery connects from, the
//! name each one uses in EHLO, and the weighted pools of them that `delivery.egress_pool` and
//! `users[].egress_pool` choose between.

use std::net::IpAddr;

use super::raw::{RawEgress, RawPoolMember};
use super::resolved::Resolver;

/// A local address to connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressSource {
    /// Its name, in pools, metrics and events.
    pub name: String,
    /// The local address bound before connecting.
    pub address: IpAddr,
    /// The EHLO name on its connections (should be the address's PTR name).
    pub ehlo: String,
}

/// A weighted set of sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPool {
    /// Its name.
    pub name: String,
    /// `(index in EgressSettings::sources, weight ≥ 1)`.
    pub members: Vec<(usize, u32)>,
}

/// Every source and pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressSettings {
    /// The sources, in configuration order.
    pub sources: Vec<EgressSource>,
    /// The pools, in configuration order.
    pub pools: Vec<EgressPool>,
}

impl EgressSettings {
    /// The index of the pool named `name`.
    pub fn pool(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// Resolves `[egress]`; `hostname` is the EHLO name of a source that names none.
    pub(super) fn resolve(r: &mut Resolver, raw: &RawEgress, hostname: &str) -> EgressSettings {
        let mut sources: Vec<EgressSource> = Vec::new();
        for (i, s) in raw.sources.iter().enumerate() {
            let key = format!("egress.sources[{i}]");
            let taken = sources.iter().any(|o| o.name == s.name);
            check_name(r, &key, &s.name, taken);
            let Ok(address) = s.address.parse::<IpAddr>() else {
                r.problem(
                    format!("{key}.address"),
                    format!("{:?} is not an IP address", s.address),
                );
                continue;
            };
            if address.is_unspecified() {
                r.problem(
                    format!("{key}.address"),
                    "must be one address of this host, not 0.0.0.0 or ::",
                );
            }
            sources.push(EgressSource {
                name: s.name.clone(),
                address,
                ehlo: s.ehlo.clone().unwrap_or_else(|| hostname.to_owned()),
            });
        }
        let mut pools: Vec<EgressPool> = Vec::new();
        for (i, p) in raw.pools.iter().enumerate() {
            let key = format!("egress.pools[{i}]");
            let taken = pools.iter().any(|o| o.name == p.name);
            check_name(r, &key, &p.name, taken);
            if p.sources.is_empty() {
                r.problem(format!("{key}.sources"), "a pool needs at least one source");
            }
            let mut members = Vec::new();
            for (j, m) in p.sources.iter().enumerate() {
                let (name, weight) = match m {
                    RawPoolMember::Name(n) => (n, 1),
                    RawPoolMember::Weighted { name, weight } => (name, *weight),
                };
                let mkey = format!("{key}.sources[{j}]");
                match sources.iter().position(|s| &s.name == name) {
                    Some(_) if weight == 0 => r.problem(mkey, "weight must be at least 1"),
                    Some(index) => members.push((index, weight)),
                    None => r.problem(
                        mkey,
                        format!("{name:?} is not a source in [[egress.sources]]"),
                    ),
                }
            }
            pools.push(EgressPool {
                name: p.name.clone(),
                members,
            });
        }
        EgressSettings { sources, pools }
    }

    /// Checks that `name`, given under `key`, names a pool.
    pub(super) fn check_pool(&self, r: &mut Resolver, key: String, name: &str) {
        if self.pool(name).is_none() {
            r.problem(key, format!("{name:?} is not a pool in [[egress.pools]]"));
        }
    }
}

/// A source or pool name must be given, and once.
fn check_name(r: &mut Resolver, key: &str, name: &str, taken: bool) {
    if name.is_empty() || taken {
        r.problem(
            format!("{key}.name"),
            format!("{name:?} is empty or given twice"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    fn resolve_str(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        from_toml(text, "t")
    }

    #[test]
    fn sources_pools_and_their_users() {
        let c = resolve_str(
            "hostname = \"mta.test\"\n\
             [[egress.sources]]\nname = \"a\"\naddress = \"127.0.0.2\"\nehlo = \"a.out.test\"\n\
             [[egress.sources]]\nname = \"b\"\naddress = \"::1\"\n\
             [[egress.pools]]\nname = \"both\"\nsources = [\"a\", { name = \"b\", weight = 3 }]\n\
             [[egress.pools]]\nname = \"only-b\"\nsources = [\"b\"]\n\
             [delivery]\negress_pool = \"both\"\n\
             [[users]]\nusername = \"u@x.test\"\npassword = \"p\"\negress_pool = \"only-b\"\n",
        )
        .unwrap();
        let e = &c.egress;
        assert_eq!(e.sources[0].ehlo, "a.out.test");
        assert_eq!(e.sources[1].ehlo, "mta.test", "hostname by default");
        assert_eq!(e.pools[0].members, [(0, 1), (1, 3)]);
        assert_eq!(c.delivery.egress_pool.as_deref(), Some("both"));
        assert_eq!(c.users.unwrap()[0].egress_pool.as_deref(), Some("only-b"));
    }

    #[test]
    fn every_problem_is_named() {
        let err = resolve_str(
            "[[egress.sources]]\nname = \"a\"\naddress = \"nowhere\"\n\
             [[egress.sources]]\nname = \"z\"\naddress = \"0.0.0.0\"\n\
             [[egress.pools]]\nname = \"p\"\nsources = [\"b\", { name = \"z\", weight = 0 }]\n\
             [[egress.pools]]\nname = \"empty\"\nsources = []\n\
             [delivery]\negress_pool = \"q\"\n\
             [[users]]\nusername = \"u@x.test\"\npassword = \"p\"\negress_pool = \"r\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "egress.sources[0].address",
            "egress.sources[1].address",
            "egress.pools[0].sources[0]",
            "egress.pools[0].sources[1]",
            "egress.pools[1].sources",
            "delivery.egress_pool",
            "users[0].egress_pool",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }
}
