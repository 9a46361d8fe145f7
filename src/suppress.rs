//! The suppression list: addresses ringmta does not send to any more because they hard-bounced
//! (user unknown, mailbox disabled) or because an operator said so. Shared by every core (the
//! RCPT check and the bounce that adds an entry), the HTTP API and the CLI through it.
//!
//! Entries are kept in memory (a hash map behind a read-write lock: a RCPT check is one hash
//! lookup, none at all while the list is empty) and in `spool_dir/suppressions.jsonl`, an
//! append-only log of additions and removals replayed and compacted at start. An operator's
//! change is synced before it is acknowledged; an entry added by a bounce is written at once but
//! not synced, so a crash may lose the last ones (the address then bounces once more and is
//! added again).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::smtp::Reply;

/// Whose list an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One list for everybody: an address that bounced for one sender is refused for all.
    Global,
    /// One list per authenticated user (mail without AUTH shares one list): one application's
    /// bounces do not stop another's mail.
    User,
}

/// One suppressed address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The address, lower case.
    pub address: String,
    /// The user whose list it is on (`None`: the global list, or mail without AUTH).
    pub user: Option<String>,
    /// Why: a bounce category (`user_unknown`, `mailbox_disabled`), `complaint` or `manual`.
    pub reason: String,
    /// The reply that caused it (or the operator's note).
    pub reply: String,
    /// When it was added, ms since the Unix epoch.
    pub at_ms: u64,
    /// When it stops applying, ms since the Unix epoch; `None`: never.
    pub expires_ms: Option<u64>,
}

/// A change to the list: a line of its log, and what nodes of a cluster tell each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// An entry added or replaced.
    Add(Entry),
    /// An entry removed.
    Remove {
        /// The address, lower case.
        address: String,
        /// Whose list.
        user: Option<String>,
    },
}

type Key = (Option<String>, String);

/// The suppression list.
#[derive(Debug)]
pub struct Suppressions {
    scope: Scope,
    entries: RwLock<HashMap<Key, Entry>>,
    count: AtomicUsize,
    log: Option<Mutex<File>>,
    path: Option<PathBuf>,
    /// Told of every refusal (the `suppressed` event); set once by the worker setup.
    observer: std::sync::OnceLock<Observer>,
    /// Told of every change made here (not of those applied from other nodes).
    on_change: std::sync::OnceLock<ChangeHook>,
}

/// What [`Suppressions::on_change`] keeps.
struct ChangeHook(Box<dyn Fn(&Change) + Send + Sync>);

impl std::fmt::Debug for ChangeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeHook")
    }
}

/// What [`Suppressions::observe`] keeps.
struct Observer(Box<dyn Fn(&Refused<'_>) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A recipient refused because it is suppressed: what the `suppressed` event says.
#[derive(Debug)]
pub struct Refused<'a> {
    /// The envelope sender (empty for the null path).
    pub sender: &'a str,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// The refused recipient.
    pub recipient: &'a str,
    /// The reply it got.
    pub reply: &'a Reply,
}

impl Suppressions {
    /// An empty list kept in memory only (tests, benches).
    pub fn in_memory(scope: Scope) -> Suppressions {
        Suppressions {
            scope,
            entries: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            log: None,
            path: None,
            observer: std::sync::OnceLock::new(),
            on_change: std::sync::OnceLock::new(),
        }
    }

    /// Opens the list kept in `path`: replays it, rewrites it compacted (expired entries
    /// dropped), and appends to it from then on.
    pub fn open(path: &Path, scope: Scope, now_ms: u64) -> std::io::Result<Suppressions> {
        let mut map = HashMap::new();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    // A torn last line (a crash mid-append, maybe inside a UTF-8 sequence) is
                    // skipped.
                    match serde_json::from_slice::<Change>(&line?) {
                        Ok(Change::Add(e)) => {
                            map.insert((e.user.clone(), e.address.clone()), e);
                        }
                        Ok(Change::Remove { address, user }) => {
                            map.remove(&(user, address));
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        map.retain(|_, e| e.expires_ms.is_none_or(|t| t > now_ms));
        let tmp = path.with_extension("tmp");
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            for e in map.values() {
                serde_json::to_writer(&mut out, &Change::Add(e.clone()))?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let log = OpenOptions::new().append(true).open(path)?;
        Ok(Suppressions {
            scope,
            count: AtomicUsize::new(map.len()),
            entries: RwLock::new(map),
            log: Some(Mutex::new(log)),
            path: Some(path.to_owned()),
            observer: std::sync::OnceLock::new(),
            on_change: std::sync::OnceLock::new(),
        })
    }

    /// Where the list is kept, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn key(&self, address: &str, user: Option<&str>) -> Key {
        let user = match self.scope {
            Scope::Global => None,
            Scope::User => user.map(str::to_owned),
        };
        (user, address.to_ascii_lowercase())
    }

    /// The entry that stops mail to `address` from `user` at `now_ms`, if any.
    pub fn find(&self, address: &str, user: Option<&str>, now_ms: u64) -> Option<Entry> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&self.key(address, user))
            .filter(|e| e.expires_ms.is_none_or(|t| t > now_ms))
            .cloned()
    }

    /// Adds (or replaces) an entry for `address` on `user`'s list (the global list under the
    /// global scope). `sync`: make it durable before returning (an operator's change).
    pub fn add(
        &self,
        address: &str,
        user: Option<&str>,
        reason: &str,
        reply: &str,
        (at_ms, expires_ms): (u64, Option<u64>),
        sync: bool,
    ) -> std::io::Result<Entry> {
        let (user, address) = self.key(address, user);
        let entry = Entry {
            address,
            user,
            reason: reason.to_owned(),
            reply: reply.to_owned(),
            at_ms,
            expires_ms,
        };
        let change = Change::Add(entry);
        self.apply_change(&change, sync)?;
        self.told(&change);
        let Change::Add(entry) = change else {
            unreachable!("built above")
        };
        Ok(entry)
    }

    /// Applies a change another node made (`[cluster]`): written to the log (not synced: the
    /// node that made it has it) and not told to [`Self::on_change`]. Returns whether it
    /// changed anything.
    pub fn apply(&self, change: &Change) -> std::io::Result<bool> {
        let current = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            match change {
                Change::Add(e) => entries.get(&(e.user.clone(), e.address.clone())) == Some(e),
                Change::Remove { address, user } => {
                    !entries.contains_key(&(user.clone(), address.clone()))
                }
            }
        };
        if current {
            return Ok(false);
        }
        self.apply_change(change, false)?;
        Ok(true)
    }

    /// Sets the function told of every change made on this node (once; later calls are
    /// ignored).
    pub fn on_change(&self, hook: Box<dyn Fn(&Change) + Send + Sync>) {
        let _ = self.on_change.set(ChangeHook(hook));
    }

    fn told(&self, change: &Change) {
        if let Some(ChangeHook(hook)) = self.on_change.get() {
            hook(change);
        }
    }

    /// Logs `change`, then applies it in memory.
    fn apply_change(&self, change: &Change, sync: bool) -> std::io::Result<()> {
        self.write(change, sync)?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Add(e) => {
                entries.insert((e.user.clone(), e.address.clone()), e.clone());
            }
            Change::Remove { address, user } => {
                entries.remove(&(user.clone(), address.clone()));
            }
        }
        self.count.store(entries.len(), Ordering::Release);
        Ok(())
    }

    /// Removes `address` from `user`'s list; returns whether it was there.
    pub fn remove(&self, address: &str, user: Option<&str>) -> std::io::Result<bool> {
        let (user, address) = self.key(address, user);
        let key = (user.clone(), address.clone());
        if !self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return Ok(false);
        }
        let change = Change::Remove { address, user };
        self.apply_change(&change, true)?;
        self.told(&change);
        Ok(true)
    }

    /// Every entry in force at `now_ms`, sorted by address then user.
    pub fn list(&self, now_ms: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| e.expires_ms.is_none_or(|t| t > now_ms))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.address, &a.user).cmp(&(&b.address, &b.user)));
        out
    }

    fn write(&self, op: &Change, sync: bool) -> std::io::Result<()> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(op)?;
        line.push(b'\n');
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        if sync {
            f.sync_data()?;
        }
        Ok(())
    }
}

impl Suppressions {
    /// Sets the function told of every refusal (once; later calls are ignored).
    pub fn observe(&self, observer: Box<dyn Fn(&Refused<'_>) + Send + Sync>) {
        let _ = self.observer.set(Observer(observer));
    }

    /// The reply refusing `address` (from `sender`, submitted by `user`) if it is suppressed,
    /// told to the observer.
    pub fn refuse(
        &self,
        address: &str,
        sender: &str,
        user: Option<&str>,
        now_ms: u64,
    ) -> Option<Reply> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let e = self.find(address, user, now_ms)?;
        let reply = refusal(&e);
        if let Some(Observer(observer)) = self.observer.get() {
            observer(&Refused {
                sender,
                user,
                recipient: address,
                reply: &reply,
            });
        }
        Some(reply)
    }
}

impl crate::smtp::RecipientCheck for Suppressions {
    fn refusal(
        &self,
        address: &str,
        sender: &crate::smtp::ReversePath,
        user: Option<&str>,
    ) -> Option<Reply> {
        use crate::time::Clock as _;
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let now = crate::time::unix_ms(crate::time::SystemClock.now());
        let sender = match sender {
            crate::smtp::ReversePath::Null => String::new(),
            crate::smtp::ReversePath::Mailbox(m) => m.to_string(),
        };
        self.refuse(address, &sender, user, now)
    }
}

/// The RCPT reply for a suppressed address:
/// `550 5.1.1 <addr> suppressed: user_unknown on 2026-12-02`.
pub fn refusal(e: &Entry) -> Reply {
    Reply::with_enhanced(
        550,
        (5, 1, 1),
        format!(
            "<{}> suppressed: {} on {}",
            e.address,
            e.reason,
            iso_date(e.at_ms)
        ),
    )
}

pub use crate::time::iso_date;

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn changes_made_here_are_told_and_changes_from_other_nodes_are_kept_but_not_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let s = Suppressions::open(&path, Scope::Global, 0).unwrap();
        let told = std::sync::Arc::new(Mutex::new(Vec::new()));
        let t = std::sync::Arc::clone(&told);
        s.on_change(Box::new(move |c| t.lock().unwrap().push(c.clone())));
        s.add("Here@X.test", None, "manual", "op", (1, None), true)
            .unwrap();
        let theirs = Entry {
            address: "there@x.test".into(),
            user: None,
            reason: "user_unknown".into(),
            reply: "550 5.1.1".into(),
            at_ms: 2,
            expires_ms: None,
        };
        assert!(s.apply(&Change::Add(theirs.clone())).unwrap());
        assert!(!s.apply(&Change::Add(theirs.clone())).unwrap(), "once");
        assert!(s.find("there@x.test", None, 3).is_some());
        assert!(s.remove("here@x.test", None).unwrap());
        let removal = Change::Remove {
            address: "there@x.test".into(),
            user: None,
        };
        assert!(s.apply(&removal).unwrap());
        assert!(!s.apply(&removal).unwrap());
        let told = told.lock().unwrap().clone();
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(matches!(&told[0], Change::Add(e) if e.address == "here@x.test"));
        assert!(matches!(&told[1], Change::Remove { address, .. } if address == "here@x.test"));
        // What came from elsewhere is in the file too: a restart keeps it.
        assert!(s.apply(&Change::Add(theirs)).unwrap());
        drop(s);
        let again = Suppressions::open(&path, Scope::Global, 0).unwrap();
        let kept: Vec<String> = again.list(3).into_iter().map(|e| e.address).collect();
        assert_eq!(kept, ["there@x.test"]);
    }

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(1_795_000_000_000), "2026-11-18");
        assert_eq!(iso_date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn entries_survive_a_reopen_and_removals_and_expiries_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppressions.jsonl");
        let now = 1_795_000_000_000;
        {
            let s = Suppressions::open(&path, Scope::Global, now).unwrap();
            assert_eq!(s.find("a@x.test", None, now), None);
            s.add(
                "A@X.test",
                Some("app"),
                "user_unknown",
                "550 5.1.1 no such user",
                (now, None),
                false,
            )
            .unwrap();
            s.add("b@x.test", None, "manual", "", (now, Some(now + DAY)), true)
                .unwrap();
            s.add("c@x.test", None, "manual", "", (now, None), true)
                .unwrap();
            assert!(s.remove("C@x.test", None).unwrap());
            assert!(!s.remove("c@x.test", None).unwrap());
            // Global scope: the user does not matter; the address is compared in lower case.
            let r = refusal(&s.find("a@X.TEST", Some("other"), now).unwrap());
            assert_eq!(
                r.to_string(),
                "550 5.1.1 <a@x.test> suppressed: user_unknown on 2026-11-18"
            );
        }
        // A torn last line is ignored.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"add\",\"addr").unwrap();
        let s = Suppressions::open(&path, Scope::Global, now + 2 * DAY).unwrap();
        let listed: Vec<String> = s
            .list(now + 2 * DAY)
            .into_iter()
            .map(|e| e.address)
            .collect();
        // b expired, c removed.
        assert_eq!(listed, ["a@x.test"]);
        assert!(s.find("b@x.test", None, now + 2 * DAY).is_none());
    }

    #[test]
    fn per_user_lists_keep_applications_apart() {
        let s = Suppressions::in_memory(Scope::User);
        s.add(
            "a@x.test",
            Some("app1"),
            "user_unknown",
            "",
            (0, None),
            false,
        )
        .unwrap();
        assert!(s.find("a@x.test", Some("app1"), 1).is_some());
        assert!(s.find("a@x.test", Some("app2"), 1).is_none());
        assert!(s.find("a@x.test", None, 1).is_none());
    }
}
