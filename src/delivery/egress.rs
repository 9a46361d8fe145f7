//! Egress: the local address an outbound connection leaves from and the EHLO name it uses.
//!
//! A message leaves through a pool: its authenticated user's `egress_pool`, else
//! `delivery.egress_pool`; with neither, the system picks the source address and the EHLO name
//! is `hostname` (no pool). Each new connection takes the pool's next source in weighted round
//! robin, and the site limits then hold per (source, site): an egress path, as receivers count
//! them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::resolved::{EgressSettings, User};

/// A local address to connect from.
#[derive(Debug, PartialEq, Eq)]
pub struct Source {
    /// Its name (`[[egress.sources]]`).
    pub name: String,
    /// The address bound before connecting.
    pub address: IpAddr,
    /// The EHLO name on its connections.
    pub ehlo: String,
}

/// A pool's index in [`Egress`].
pub type PoolId = u16;

struct Pool {
    /// `(source index, weight)`.
    members: Vec<(usize, u32)>,
    /// Connections started from the pool so far (the round robin's position).
    next: AtomicU64,
}

/// Every source and pool, shared by the cores.
pub struct Egress {
    sources: Vec<Arc<Source>>,
    pools: Vec<Pool>,
    default_pool: Option<PoolId>,
    users: HashMap<String, PoolId>,
}

impl Egress {
    /// Builds the pools from checked settings (every name they use exists).
    pub fn new(settings: &EgressSettings, default_pool: Option<&str>, users: &[User]) -> Egress {
        let id = |name: &str| settings.pool(name).map(|i| i as PoolId);
        Egress {
            sources: settings
                .sources
                .iter()
                .map(|s| {
                    Arc::new(Source {
                        name: s.name.clone(),
                        address: s.address,
                        ehlo: s.ehlo.clone(),
                    })
                })
                .collect(),
            pools: settings
                .pools
                .iter()
                .map(|p| Pool {
                    members: p.members.clone(),
                    next: AtomicU64::new(0),
                })
                .collect(),
            default_pool: default_pool.and_then(id),
            users: users
                .iter()
                .filter_map(|u| Some((u.username.clone(), id(u.egress_pool.as_deref()?)?)))
                .collect(),
        }
    }

    /// No sources, no pools: every message leaves as the system routes it.
    pub fn none() -> Egress {
        Egress::new(&EgressSettings::default(), None, &[])
    }

    /// The pool a message leaves through: its authenticated user's, else the default.
    pub fn pool_for(&self, auth_user: Option<&str>) -> Option<PoolId> {
        auth_user
            .and_then(|u| self.users.get(u).copied())
            .or(self.default_pool)
    }

    /// The source the next connection from `pool` uses.
    pub fn pick(&self, pool: PoolId) -> Option<&Arc<Source>> {
        self.candidates(pool).into_iter().next()
    }

    /// The sources the next connection from `pool` may use, in the order to try them: the
    /// pool's next in weighted round robin, then its other members in the pool's order (for
    /// when that one's path is suspended, throttled or full).
    pub fn candidates(&self, pool: PoolId) -> Vec<&Arc<Source>> {
        let Some(pool) = self.pools.get(usize::from(pool)) else {
            return Vec::new();
        };
        let turn = pool.next.fetch_add(1, Ordering::Relaxed);
        let Some(first) = weighted_turn(&pool.members, turn) else {
            return Vec::new();
        };
        std::iter::once(first)
            .chain(pool.members.iter().map(|(i, _)| *i).filter(|i| *i != first))
            .filter_map(|i| self.sources.get(i))
            .collect()
    }
}

/// The member whose turn `turn` is in a weighted round robin: over any run of `total weight`
/// consecutive turns, each member gets exactly its weight. Within a run, members are spread
/// out (smooth weighted round robin), not served in blocks.
fn weighted_turn(members: &[(usize, u32)], turn: u64) -> Option<usize> {
    let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    // Smooth weighted round robin (as nginx does), replayed for `turn % total` steps: each
    // step every member gains its weight and the richest pays `total` and is chosen.
    let steps = turn % total;
    let mut credit: Vec<i64> = vec![0; members.len()];
    let mut chosen = 0;
    for _ in 0..=steps {
        for (c, (_, w)) in credit.iter_mut().zip(members) {
            *c += i64::from(*w);
        }
        chosen = (0..members.len())
            .max_by_key(|i| (credit[*i], std::cmp::Reverse(*i)))
            .unwrap_or(0);
        credit[chosen] -= total as i64;
    }
    Some(members[chosen].0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resolved::{EgressPool, EgressSource, Secret};

    fn settings() -> EgressSettings {
        let source = |name: &str, ip: &str| EgressSource {
            name: name.into(),
            address: ip.parse().unwrap(),
            ehlo: format!("{name}.out.test"),
        };
        EgressSettings {
            sources: vec![source("a", "127.0.0.2"), source("b", "127.0.0.3")],
            pools: vec![
                EgressPool {
                    name: "both".into(),
                    members: vec![(0, 1), (1, 3)],
                },
                EgressPool {
                    name: "only-a".into(),
                    members: vec![(0, 1)],
                },
            ],
        }
    }

    #[test]
    fn weighted_round_robin_gives_each_source_its_share_spread_out() {
        let members = [(0, 1), (1, 3)];
        let turns: Vec<usize> = (0..8)
            .map(|t| weighted_turn(&members, t).unwrap())
            .collect();
        assert_eq!(turns.iter().filter(|s| **s == 0).count(), 2, "{turns:?}");
        assert_eq!(
            turns[..4],
            turns[4..],
            "the pattern repeats every total weight"
        );
        let members = [(0, 2), (1, 2), (2, 1)];
        let run: Vec<usize> = (0..5)
            .map(|t| weighted_turn(&members, t).unwrap())
            .collect();
        for (source, weight) in [(0, 2), (1, 2), (2, 1)] {
            assert_eq!(
                run.iter().filter(|s| **s == source).count(),
                weight,
                "{run:?}"
            );
        }
        assert_ne!(run[0], run[1], "spread out: {run:?}");
        assert_eq!(weighted_turn(&[], 3), None);
    }

    #[test]
    fn a_users_pool_wins_over_the_default_and_no_pool_means_no_source() {
        let user = |name: &str, pool: Option<&str>| User {
            username: name.into(),
            secret: Secret::Plain(String::new()),
            allowed_senders: vec![],
            egress_pool: pool.map(Into::into),
            max_queue_lifetime: None,
            notify: None,
        };
        let users = [
            user("app@x.test", Some("only-a")),
            user("other@x.test", None),
        ];
        let e = Egress::new(&settings(), Some("both"), &users);
        assert_eq!(e.pool_for(Some("app@x.test")), Some(1));
        assert_eq!(e.pool_for(Some("other@x.test")), Some(0));
        assert_eq!(e.pool_for(None), Some(0));
        let picked: Vec<&str> = (0..4).map(|_| e.pick(0).unwrap().name.as_str()).collect();
        assert_eq!(
            picked.iter().filter(|s| **s == "b").count(),
            3,
            "{picked:?}"
        );
        assert_eq!(e.pick(1).unwrap().ehlo, "a.out.test");
        let none = Egress::none();
        assert_eq!(none.pool_for(Some("app@x.test")), None);
        assert_eq!(none.pick(0), None);
    }
}
