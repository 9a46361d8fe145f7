//! Operator suspensions: hold delivery for a recipient domain, a destination site, an egress
//! source or an authenticated user, until resumed or for a while.
//!
//! Shared by every core and the HTTP thread. A held recipient is not attempted and not
//! deferred: it waits on its core (domain, user) or its destination waits parked (site,
//! source), and goes within a second of the resume or the expiry. With no suspension, a check
//! is one atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

/// What a suspension holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Recipients of this domain (lower case).
    Domain(String),
    /// Connections to this site (`delivery::sites::site_of`).
    Site(String),
    /// Connections from this egress source.
    Source(String),
    /// Messages submitted by this authenticated user.
    User(String),
}

impl Target {
    /// A target from its kind (`domain`, `site`, `source`, `user`) and value.
    pub fn parse(kind: &str, value: &str) -> Option<Target> {
        if value.is_empty() {
            return None;
        }
        Some(match kind {
            "domain" => Target::Domain(value.trim_end_matches('.').to_ascii_lowercase()),
            "site" => Target::Site(value.to_ascii_lowercase()),
            "source" => Target::Source(value.to_owned()),
            "user" => Target::User(value.to_owned()),
            _ => return None,
        })
    }
}

/// One suspension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Suspension {
    /// Its id (for the resume).
    pub id: u64,
    /// What it holds.
    pub target: Target,
    /// When it ends by itself (ms since the Unix epoch); `None` until resumed.
    pub until_ms: Option<u64>,
}

impl Suspension {
    fn live(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| now_ms < u)
    }
}

/// A change to the suspensions, as nodes of a cluster tell each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// A suspension added.
    Suspend(Suspension),
    /// A suspension ended by the operator.
    Resume {
        /// Its id.
        id: u64,
    },
}

/// What [`Suspensions::on_change`] keeps.
type ChangeHook = Box<dyn Fn(&Change) + Send + Sync>;

/// Every suspension.
#[derive(Default)]
pub struct Suspensions {
    list: Mutex<Vec<Suspension>>,
    /// Suspensions in `list` (live or expired but not yet dropped): 0 means no check.
    count: AtomicUsize,
    /// Bumped on every change, so that cores know to look at what they hold again.
    generation: AtomicU64,
    next_id: AtomicU64,
    /// Told of every change made here (not of those applied from other nodes).
    on_change: std::sync::OnceLock<ChangeHook>,
}

impl Suspensions {
    /// Adds a suspension; returns it.
    pub fn add(&self, target: Target, until_ms: Option<u64>) -> Suspension {
        let s = Suspension {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            target,
            until_ms,
        };
        let mut list = self.lock();
        list.push(s.clone());
        self.changed(list.len());
        drop(list);
        self.told(&Change::Suspend(s.clone()));
        s
    }

    /// Makes ids start above `base` (a cluster node's number in the high bits keeps the ids of
    /// different nodes apart).
    pub fn set_id_base(&self, base: u64) {
        self.next_id.fetch_max(base, Ordering::AcqRel);
    }

    /// Sets the function told of every change made on this node (once).
    pub fn on_change(&self, hook: ChangeHook) {
        let _ = self.on_change.set(hook);
    }

    fn told(&self, change: &Change) {
        if let Some(hook) = self.on_change.get() {
            hook(change);
        }
    }

    /// Applies a change another node made, not told to [`Self::on_change`]; returns whether it
    /// changed anything.
    pub fn apply(&self, change: &Change) -> bool {
        let mut list = self.lock();
        let changed = match change {
            Change::Suspend(s) if !list.iter().any(|x| x.id == s.id) => {
                // One of this node's own from before a restart: new ids go above it.
                let next = self.next_id.load(Ordering::Acquire);
                if s.id >> 40 == next >> 40 {
                    self.next_id.fetch_max(s.id, Ordering::AcqRel);
                }
                list.push(s.clone());
                true
            }
            Change::Suspend(_) => false,
            Change::Resume { id } => {
                let before = list.len();
                list.retain(|s| s.id != *id);
                list.len() < before
            }
        };
        if changed {
            self.changed(list.len());
        }
        changed
    }

    /// Ends a suspension; false when there is none with that id.
    pub fn resume(&self, id: u64) -> bool {
        let mut list = self.lock();
        let before = list.len();
        list.retain(|s| s.id != id);
        let found = list.len() < before;
        self.changed(list.len());
        drop(list);
        if found {
            self.told(&Change::Resume { id });
        }
        found
    }

    /// The suspensions in force at `now_ms` (expired ones are dropped).
    pub fn list(&self, now_ms: u64) -> Vec<Suspension> {
        let mut list = self.lock();
        let before = list.len();
        list.retain(|s| s.live(now_ms));
        if list.len() < before {
            self.changed(list.len());
        }
        list.clone()
    }

    /// A number that changes whenever a suspension is added, resumed or found expired.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether mail to `domain` from `user` is held at `now_ms`.
    pub fn holds_message(&self, now_ms: u64, domain: &str, user: Option<&str>) -> bool {
        self.holds(now_ms, |t| match t {
            Target::Domain(d) => d == domain,
            Target::User(u) => Some(u.as_str()) == user,
            _ => false,
        })
    }

    /// Whether connections to `site` from `source` are held at `now_ms`.
    pub fn holds_path(&self, now_ms: u64, site: &str, source: Option<&str>) -> bool {
        self.holds(now_ms, |t| match t {
            Target::Site(s) => s == site,
            Target::Source(s) => Some(s.as_str()) == source,
            _ => false,
        })
    }

    /// Whether any live suspension matches (and whether one has expired: then the list changes).
    fn holds(&self, now_ms: u64, matches: impl Fn(&Target) -> bool) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.list(now_ms).iter().any(|s| matches(&s.target))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Suspension>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, len: usize) {
        self.count.store(len, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_from_other_nodes_apply_once_and_ids_stay_apart() {
        use std::sync::Arc;
        let s = Suspensions::default();
        let told = Arc::new(Mutex::new(Vec::new()));
        let t = Arc::clone(&told);
        s.on_change(Box::new(move |c| t.lock().unwrap().push(c.clone())));
        s.set_id_base(7 << 40);
        // This node's own suspension from before a restart, merged back from Redis.
        let old = Suspension {
            id: (7 << 40) + 5,
            target: Target::Domain("a.test".into()),
            until_ms: None,
        };
        assert!(s.apply(&Change::Suspend(old.clone())));
        assert!(!s.apply(&Change::Suspend(old.clone())), "once");
        // Another node's, with a higher number.
        let theirs = Suspension {
            id: (9 << 40) + 1,
            target: Target::Domain("b.test".into()),
            until_ms: None,
        };
        assert!(s.apply(&Change::Suspend(theirs.clone())));
        assert!(
            told.lock().unwrap().is_empty(),
            "applied changes are not told"
        );
        let mine = s.add(Target::Domain("c.test".into()), None);
        assert_eq!(
            mine.id,
            (7 << 40) + 6,
            "above this node's old one, in its range"
        );
        assert!(s.apply(&Change::Resume { id: theirs.id }));
        assert!(!s.holds_message(0, "b.test", None));
        assert!(s.resume(old.id));
        assert_eq!(
            *told.lock().unwrap(),
            [Change::Suspend(mine), Change::Resume { id: old.id }]
        );
    }

    #[test]
    fn targets_hold_what_they_name_until_resumed_or_expired() {
        let s = Suspensions::default();
        assert!(!s.holds_message(0, "example.net", None));
        let g0 = s.generation();
        let domain = s.add(Target::parse("domain", "Example.NET.").unwrap(), None);
        let user = s.add(Target::User("app@x.test".into()), Some(10_000));
        s.add(Target::parse("site", "MX1.test mx2.test").unwrap(), None);
        s.add(Target::Source("ip1".into()), Some(5_000));
        assert_ne!(s.generation(), g0);
        assert!(s.holds_message(0, "example.net", None));
        assert!(!s.holds_message(0, "example.org", None));
        assert!(s.holds_path(0, "mx1.test mx2.test", None));
        assert!(!s.holds_path(0, "mx1.test", None));
        assert!(s.holds_path(4_999, "other", Some("ip1")));
        assert!(!s.holds_path(5_000, "other", Some("ip1")));
        assert!(s.holds_message(9_999, "example.org", Some("app@x.test")));
        assert!(
            !s.holds_message(10_000, "example.org", Some("app@x.test")),
            "expired"
        );
        assert_eq!(s.list(10_000).len(), 2, "expired ones are dropped");
        let g1 = s.generation();
        assert!(s.resume(domain.id));
        assert!(!s.resume(domain.id));
        assert!(!s.resume(user.id), "already expired");
        assert_ne!(s.generation(), g1);
        assert!(!s.holds_message(0, "example.net", None));
        assert_eq!(Target::parse("planet", "x"), None);
        assert_eq!(Target::parse("domain", ""), None);
    }
}
