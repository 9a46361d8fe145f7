//! The cluster agent: one thread per node that exchanges state with Redis every [`TICK`].
//!
//! Redis keys (all under `ringmta:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `nodes` | sorted set | live nodes, scored by the end of their lease (Redis time, ms) |
//! | `node-ids` | hash | node number → node name (queue ids stay unique) |
//! | `path:<site>\|<source>` | hash | node → "held want": the connections a node holds on a path and whether it wants any |
//! | `events` | stream | throttles, suspensions, suppressions (`n` node, `k` kind, `d` JSON) |
//! | `suppressions` | hash | `<user>\n<address>` → entry JSON |
//! | `suspensions` | hash | id → suspension JSON |
//! | `ip:<counter>:<address>:<window>` | string | events counted by every node in one window |

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use redis::{Connection, Script};

use super::{BACKLOG, Cluster, Outgoing, Parts, TICK};
use crate::config::cluster::ClusterSettings;
use crate::delivery::sites::{Sharing, Site, fallback_share};
use crate::queue::throttle::Signal;

const NODES: &str = "ringmta:nodes";
const NODE_IDS: &str = "ringmta:node-ids";
const EVENTS: &str = "ringmta:events";
const SUPPRESSIONS: &str = "ringmta:suppressions";
const SUSPENSIONS: &str = "ringmta:suspensions";
/// Events kept in the stream (a node away for longer merges the lists at its re-join).
const STREAM_LENGTH: usize = 100_000;
/// A path stays busy (keeps its grant) this long after its last connection closed, so that
/// mail arriving in bursts does not wait for a new grant every time.
const BUSY_HOLD: Duration = Duration::from_secs(2);
/// How long one Redis call may take before Redis counts as down.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Renews this node's lease; returns the live nodes, or -1 when another process holds the
/// node's name (KEYS = nodes, the name's token; ARGV = node, lease ms, this process's token).
const HEARTBEAT: &str = r"
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

/// One path's lease: KEYS = path hash, nodes; ARGV = node, want (0/1), connections held,
/// limit, this process's token. Forgets the entries of nodes whose lease ran out and of
/// processes that are gone (a node stopped or restarted: its name's token changed or was
/// removed), splits the limit evenly among the nodes that want connections (the remainder
/// rotating every minute), and grants this node its share of what the others do not hold.
/// Returns the grant and the number of busy nodes.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, want, held_now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[1])
local others, busy = 0, {}
for i = 1, #fields, 2 do
  local n = fields[i]
  if n ~= node then
    local until_ms = redis.call('ZSCORE', KEYS[2], n)
    local h, w, token = string.match(fields[i + 1], '(%d+) (%d+) (%S+)')
    if (not until_ms) or tonumber(until_ms) < now or (not token)
      or redis.call('GET', 'ringmta:node-token:' .. n) ~= token then
      redis.call('HDEL', KEYS[1], n)
    else
      others = others + tonumber(h)
      if tonumber(w) > 0 then table.insert(busy, n) end
    end
  end
end
local grant = 0
if want > 0 then
  table.insert(busy, node)
  table.sort(busy)
  local b = #busy
  local me = 0
  for i, n in ipairs(busy) do if n == node then me = i - 1 end end
  local fair = math.floor(limit / b)
  if (me - math.floor(now / 60000)) % b < limit % b then fair = fair + 1 end
  grant = math.max(0, math.min(fair, limit - others))
end
local held = math.max(grant, held_now)
if held == 0 and want == 0 then
  redis.call('HDEL', KEYS[1], node)
else
  redis.call('HSET', KEYS[1], node, held .. ' ' .. want .. ' ' .. ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 86400000)
end
return {grant, math.max(#busy, 1)}
";

/// Why a node cannot take part, whatever Redis's health: another node holds its number or
/// another process runs under its name.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Conflict(pub String);

/// Claims `settings.node_id` for this node's name; refused ([`Conflict`]) when another name
/// holds it.
pub(super) fn claim_node_id(con: &mut Connection, settings: &ClusterSettings) -> Result<()> {
    let _: bool = redis::cmd("HSETNX")
        .arg(NODE_IDS)
        .arg(settings.node_id)
        .arg(&settings.node)
        .query(con)
        .context("cluster: claiming the node number")?;
    let holder: Option<String> = redis::cmd("HGET")
        .arg(NODE_IDS)
        .arg(settings.node_id)
        .query(con)
        .context("cluster: reading the node number")?;
    super::check_claim(settings, holder).map_err(|e| Conflict(e.to_string()).into())
}

#[derive(Default)]
struct PathState {
    /// Own throttling signals already sent.
    published: u64,
    /// Until when the path counts as busy.
    busy_until: Option<Instant>,
    /// Whether Redis holds this node's entry for the path.
    registered: bool,
}

#[derive(Default)]
struct IpShare {
    window: u64,
    mine: HashMap<IpAddr, u32>,
    others: HashMap<IpAddr, u32>,
}

pub(super) struct Agent {
    cluster: Arc<Cluster>,
    client: redis::Client,
    parts: Parts,
    rx: crossbeam_channel::Receiver<Outgoing>,
    con: Option<Connection>,
    heartbeat: Script,
    lease: Script,
    started: Instant,
    /// This process's token: two processes configured with one node name are told apart.
    token: String,
    /// When the last successful heartbeat was sent (the lease runs from there).
    last_contact: Option<Instant>,
    /// When the node joined again after running on its fallback shares: for one lease it
    /// takes no more than those shares, until every node has told Redis what it holds.
    rejoined: Option<Instant>,
    fell_back: bool,
    /// When the loss of Redis was last logged.
    logged: Option<Instant>,
    stream_id: Option<String>,
    backlog: VecDeque<Outgoing>,
    paths: HashMap<(String, Option<String>), PathState>,
    ips: HashMap<&'static str, IpShare>,
}

impl Agent {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        client: redis::Client,
        parts: Parts,
        rx: crossbeam_channel::Receiver<Outgoing>,
    ) -> Agent {
        Agent {
            cluster,
            client,
            parts,
            rx,
            con: None,
            heartbeat: Script::new(HEARTBEAT),
            lease: Script::new(LEASE),
            started: Instant::now(),
            token: format!("{:016x}", rand::random::<u64>()),
            last_contact: None,
            rejoined: None,
            fell_back: false,
            logged: None,
            stream_id: None,
            backlog: VecDeque::new(),
            paths: HashMap::new(),
            ips: HashMap::new(),
        }
    }

    pub(super) fn run(mut self) {
        while !self.cluster.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            while let Ok(change) = self.rx.try_recv() {
                if self.backlog.len() >= BACKLOG {
                    self.cluster.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.backlog.push_back(change);
                }
            }
            let con = match self.con.take() {
                Some(con) => Ok((con, false)),
                None => self.connect().map(|c| (c, true)),
            };
            match con.and_then(|(mut con, fresh)| {
                self.exchange(&mut con, fresh)?;
                Ok(con)
            }) {
                Ok(con) => self.con = Some(con),
                Err(e) => self.lost(&e),
            }
            std::thread::sleep(TICK.saturating_sub(started.elapsed()));
        }
        // A node that stops frees its leases and its name at once rather than after
        // `cluster.lease`.
        if let Some(con) = &mut self.con {
            let node = &self.cluster.settings.node;
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("ZREM")
                .arg(NODES)
                .arg(node)
                .ignore()
                .cmd("DEL")
                .arg(token_key(node))
                .ignore()
                .query(con);
        }
        self.cluster.finished.store(true, Ordering::Release);
    }

    fn connect(&self) -> Result<Connection> {
        let con = self.client.get_connection_with_timeout(TIMEOUT)?;
        con.set_read_timeout(Some(TIMEOUT))?;
        con.set_write_timeout(Some(TIMEOUT))?;
        Ok(con)
    }

    /// One exchange with Redis; `fresh`: a new connection, so join first.
    fn exchange(&mut self, con: &mut Connection, fresh: bool) -> Result<()> {
        let settings = &self.cluster.settings;
        let sent = Instant::now();
        let nodes: i64 = self
            .heartbeat
            .key(NODES)
            .key(token_key(&settings.node))
            .arg(&settings.node)
            .arg(settings.lease.as_millis() as u64)
            .arg(&self.token)
            .invoke(con)?;
        if nodes < 0 {
            return Err(Conflict(format!(
                "another process runs as node {:?} (give each node its own cluster.node)",
                settings.node
            ))
            .into());
        }
        self.cluster
            .nodes
            .store((nodes as usize).max(1), Ordering::Release);
        if fresh {
            self.join(con)?;
        }
        self.flush(con)?;
        self.publish_throttles(con)?;
        self.renew_leases(con)?;
        self.read_events(con)?;
        self.exchange_counts(con)?;
        self.last_contact = Some(sent);
        Ok(())
    }

    /// (Re)joins: checks the node number, loads the lease script, reads the events missed, then
    /// merges the suppression and suspension lists both ways.
    fn join(&mut self, con: &mut Connection) -> Result<()> {
        claim_node_id(con, &self.cluster.settings)?;
        self.lease.load(con)?;
        if self.stream_id.is_none() {
            let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(EVENTS)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(con)?;
            self.stream_id = Some(
                last.ids
                    .first()
                    .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
            );
        }
        // The events missed, then this node's own changes made meanwhile, then what is left
        // to merge: an entry only one side has is added to the other (with an event, so that
        // the nodes already up learn it too).
        self.read_events(con)?;
        self.flush(con)?;
        let now_ms = crate::time::unix_ms(SystemTime::now());
        let mut news: Vec<(&str, String)> = Vec::new();

        let theirs = hscan(con, SUPPRESSIONS)?;
        for json in theirs.values() {
            if let Ok(entry) = serde_json::from_str::<crate::suppress::Entry>(json)
                && entry.expires_ms.is_none_or(|t| t > now_ms)
            {
                self.parts
                    .suppressions
                    .apply(&crate::suppress::Change::Add(entry))?;
            }
        }
        let mut pipe = redis::pipe();
        for entry in self.parts.suppressions.list(now_ms) {
            let field = suppression_field(entry.user.as_deref(), &entry.address);
            if !theirs.contains_key(&field) {
                pipe.cmd("HSET")
                    .arg(SUPPRESSIONS)
                    .arg(field)
                    .arg(serde_json::to_string(&entry)?)
                    .ignore();
                let change = crate::suppress::Change::Add(entry);
                news.push(("suppression", serde_json::to_string(&change)?));
            }
        }
        let theirs = hscan(con, SUSPENSIONS)?;
        for (id, json) in &theirs {
            match serde_json::from_str::<crate::delivery::suspend::Suspension>(json) {
                Ok(s) if s.until_ms.is_none_or(|u| u > now_ms) => {
                    self.parts
                        .suspensions
                        .apply(&crate::delivery::suspend::Change::Suspend(s));
                }
                _ => {
                    pipe.cmd("HDEL").arg(SUSPENSIONS).arg(id).ignore();
                }
            }
        }
        for s in self.parts.suspensions.list(now_ms) {
            if !theirs.contains_key(&s.id.to_string()) {
                pipe.cmd("HSET")
                    .arg(SUSPENSIONS)
                    .arg(s.id)
                    .arg(serde_json::to_string(&s)?)
                    .ignore();
                let change = crate::delivery::suspend::Change::Suspend(s);
                news.push(("suspension", serde_json::to_string(&change)?));
            }
        }
        for (kind, data) in news {
            self.add_event(&mut pipe, kind, data);
        }
        // In slices, so that a long list does not make one call outlast the timeout.
        for slice in pipe.cmd_iter().collect::<Vec<_>>().chunks(1000) {
            let mut part = redis::pipe();
            for cmd in slice {
                part.add_command((*cmd).clone()).ignore();
            }
            part.query::<()>(con)?;
        }

        self.parts.sites.set_sharing(Sharing::Leased);
        if self.fell_back {
            self.rejoined = Some(Instant::now());
            self.fell_back = false;
        }
        self.logged = None;
        self.cluster.up.store(true, Ordering::Release);
        tracing::info!(
            node = %self.cluster.settings.node,
            nodes = self.cluster.nodes.load(Ordering::Acquire),
            "cluster: joined; limits, throttles, suspensions and suppressions are shared"
        );
        Ok(())
    }

    /// Sends the changes made here (the backlog kept while Redis was away included).
    fn flush(&mut self, con: &mut Connection) -> Result<()> {
        while !self.backlog.is_empty() {
            let n = self.backlog.len().min(1000);
            let mut pipe = redis::pipe();
            for change in self.backlog.iter().take(n) {
                let (kind, data) = match change {
                    Outgoing::Suppression(c) => {
                        match c {
                            crate::suppress::Change::Add(e) => pipe
                                .cmd("HSET")
                                .arg(SUPPRESSIONS)
                                .arg(suppression_field(e.user.as_deref(), &e.address))
                                .arg(serde_json::to_string(e)?),
                            crate::suppress::Change::Remove { address, user } => pipe
                                .cmd("HDEL")
                                .arg(SUPPRESSIONS)
                                .arg(suppression_field(user.as_deref(), address)),
                        }
                        .ignore();
                        ("suppression", serde_json::to_string(c)?)
                    }
                    Outgoing::Suspension(c) => {
                        match c {
                            crate::delivery::suspend::Change::Suspend(s) => pipe
                                .cmd("HSET")
                                .arg(SUSPENSIONS)
                                .arg(s.id)
                                .arg(serde_json::to_string(s)?),
                            crate::delivery::suspend::Change::Resume { id } => {
                                pipe.cmd("HDEL").arg(SUSPENSIONS).arg(*id)
                            }
                        }
                        .ignore();
                        ("suspension", serde_json::to_string(c)?)
                    }
                };
                self.add_event(&mut pipe, kind, data);
            }
            pipe.query::<()>(con)?;
            self.backlog.drain(..n);
            self.cluster
                .events_out
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn add_event(&self, pipe: &mut redis::Pipeline, kind: &str, data: String) {
        pipe.cmd("XADD")
            .arg(EVENTS)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LENGTH)
            .arg("*")
            .arg("n")
            .arg(&self.cluster.settings.node)
            .arg("k")
            .arg(kind)
            .arg("d")
            .arg(data)
            .ignore();
    }

    /// Tells the other nodes of the throttling replies this node got since the last tick.
    fn publish_throttles(&mut self, con: &mut Connection) -> Result<()> {
        let mut pipe = redis::pipe();
        let mut sent = 0;
        let (now, now_ms) = (Instant::now(), crate::time::unix_ms(SystemTime::now()));
        for site in self.parts.sites.paths() {
            let (count, last, left) = site.own_signals(now);
            let state = self.paths.entry(path_key(&site)).or_default();
            if count <= state.published {
                continue;
            }
            state.published = count;
            // A pause over by now (Redis was away while it lasted) is not told.
            let Some(signal) = last.filter(|_| !left.is_zero()) else {
                continue;
            };
            let data = serde_json::json!({
                "site": site.name(),
                "source": site.source(),
                "domain": site.domain(),
                "signal": signal.name(),
                "until_ms": now_ms + left.as_millis() as u64,
            });
            self.add_event(&mut pipe, "throttle", data.to_string());
            sent += 1;
        }
        if sent > 0 {
            pipe.query::<()>(con)?;
            self.cluster.events_out.fetch_add(sent, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Renews the lease of every path this node uses or registered, and applies the grants.
    fn renew_leases(&mut self, con: &mut Connection) -> Result<()> {
        let now = Instant::now();
        let mut asked: Vec<(Arc<Site>, bool, usize)> = Vec::new();
        let mut pipe = redis::pipe();
        for site in self.parts.sites.paths() {
            let (connections, waiting) = site.demand();
            let state = self.paths.entry(path_key(&site)).or_default();
            if connections > 0 || waiting {
                state.busy_until = Some(now + BUSY_HOLD);
            }
            let busy = state.busy_until.is_some_and(|t| now < t);
            if !busy && !state.registered && connections == 0 {
                // Idle and unknown to Redis: it holds nothing, so it may open nothing until
                // its first grant (it may still have a fallback share from an outage).
                if site.cap() > 0 {
                    site.set_share(0, 1);
                }
                continue;
            }
            // What this node may hold is counted, not only what it holds: a grant lowered by
            // this call applies only when its reply comes back. A path going idle gives its
            // grant up first, so that Redis can forget it.
            let mut connections = connections;
            if !busy {
                site.set_share(0, 1);
                // A core may have taken a slot with the old cap just before: count it.
                connections = site.demand().0;
            }
            let held = connections.max(site.cap().min(site.max_connections()));
            pipe.cmd("EVALSHA")
                .arg(self.lease.get_hash())
                .arg(2)
                .arg(format!(
                    "ringmta:path:{}|{}",
                    site.name(),
                    site.source().unwrap_or("")
                ))
                .arg(NODES)
                .arg(&self.cluster.settings.node)
                .arg(u8::from(busy))
                .arg(held)
                .arg(site.max_connections())
                .arg(&self.token);
            asked.push((site, busy, connections));
        }
        if asked.is_empty() {
            return Ok(());
        }
        let grants: Vec<(usize, u64)> = pipe.query(con)?;
        // Just back from the fallback shares: the other nodes may still hold theirs without
        // Redis knowing, so for one lease no grant goes above this node's share.
        let settle = self
            .rejoined
            .is_some_and(|t| now.duration_since(t) < self.cluster.settings.lease);
        let nodes = self.cluster.nodes.load(Ordering::Acquire);
        for ((site, busy, connections), (grant, busy_nodes)) in asked.into_iter().zip(grants) {
            let cap = if settle {
                grant.min(fallback_share(site.max_connections(), nodes))
            } else {
                grant
            };
            site.set_share(cap, busy_nodes);
            if let Some(state) = self.paths.get_mut(&path_key(&site)) {
                state.registered = busy || connections > 0;
            }
        }
        Ok(())
    }

    /// Applies the events the other nodes sent since the last read.
    fn read_events(&mut self, con: &mut Connection) -> Result<()> {
        loop {
            let from = self.stream_id.clone().unwrap_or_else(|| "0-0".into());
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg(EVENTS)
                .arg(&from)
                .query(con)?;
            let entries: Vec<redis::streams::StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            let Some(last) = entries.last() else {
                return Ok(());
            };
            self.stream_id = Some(last.id.clone());
            let full = entries.len() == 1000;
            for e in entries {
                let field = |name: &str| e.get::<String>(name).unwrap_or_default();
                if field("n") == self.cluster.settings.node {
                    continue;
                }
                if let Err(err) = self.apply(&field("k"), &field("d")) {
                    tracing::warn!(id = %e.id, error = %err, "cluster: an event from another node was not applied");
                } else {
                    self.cluster.events_in.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn apply(&self, kind: &str, data: &str) -> Result<()> {
        match kind {
            "suppression" => {
                self.parts
                    .suppressions
                    .apply(&serde_json::from_str(data)?)?;
            }
            "suspension" => {
                self.parts.suspensions.apply(&serde_json::from_str(data)?);
            }
            "throttle" => {
                #[derive(serde::Deserialize)]
                struct Throttle {
                    site: String,
                    source: Option<String>,
                    domain: String,
                    signal: String,
                    until_ms: u64,
                }
                let t: Throttle = serde_json::from_str(data)?;
                if t.until_ms <= crate::time::unix_ms(SystemTime::now()) {
                    return Ok(());
                }
                let signal = match t.signal.as_str() {
                    "rate_limited" => Signal::RateLimited,
                    "blocklisted" => Signal::Blocklisted,
                    other => anyhow::bail!("unknown signal {other:?}"),
                };
                let site = self
                    .parts
                    .sites
                    .get(&t.site, t.source.as_deref(), &t.domain);
                let pause = site.signal_from_peer(signal, Instant::now());
                tracing::warn!(
                    site = %t.site,
                    signal = %t.signal,
                    pause_ms = pause.as_millis() as u64,
                    "site throttled by another node"
                );
            }
            other => anyhow::bail!("unknown event kind {other:?}"),
        }
        Ok(())
    }

    /// Adds this node's per-address counts to the cluster's, and learns the others'.
    fn exchange_counts(&mut self, con: &mut Connection) -> Result<()> {
        let now_ms = crate::time::unix_ms(SystemTime::now());
        for (name, counter) in &self.parts.counters {
            let window_ms = (counter.window().as_millis() as u64).max(1);
            let window = now_ms / window_ms;
            let share = self.ips.entry(name).or_default();
            let new_window = share.window != window;
            if new_window {
                *share = IpShare {
                    window,
                    ..IpShare::default()
                };
            }
            let pending = counter.take_pending();
            if pending.is_empty() {
                if new_window {
                    counter.set_peers(HashMap::new(), 1);
                }
                continue;
            }
            let mut pipe = redis::pipe();
            for (ip, n) in &pending {
                let key = format!("ringmta:ip:{name}:{ip}:{window}");
                pipe.cmd("INCRBY").arg(&key).arg(*n);
                pipe.cmd("PEXPIRE").arg(&key).arg(2 * window_ms).ignore();
            }
            let totals: Vec<u64> = pipe.query(con)?;
            for ((ip, n), total) in pending.into_iter().zip(totals) {
                let mine = share.mine.entry(ip).or_insert(0);
                *mine += n;
                let others = u32::try_from(total)
                    .unwrap_or(u32::MAX)
                    .saturating_sub(*mine);
                share.others.insert(ip, others);
            }
            counter.set_peers(share.others.clone(), 1);
        }
        Ok(())
    }

    /// Redis did not answer (or refused this node): keep the grants for one lease, then take
    /// the fallback shares.
    fn lost(&mut self, e: &anyhow::Error) {
        self.con = None;
        let conflict = e.downcast_ref::<Conflict>().is_some();
        let was_up = self.cluster.up.swap(false, Ordering::AcqRel);
        if was_up {
            self.cluster.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        // Logged when it happens, then once a minute while it lasts.
        if was_up
            || self
                .logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.logged = Some(Instant::now());
            if conflict {
                tracing::error!(
                    "cluster: cannot join: {e:#}; running on the fallback shares until it is fixed"
                );
            } else {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    lease_ms = self.cluster.settings.lease.as_millis() as u64,
                    "cluster: Redis cannot be reached; keeping the current shares for one lease, then each limit divided by the nodes last seen"
                );
            }
        }
        // The grants hold until the lease this node last renewed runs out: the others count
        // them until then.
        let since = self.last_contact.unwrap_or(self.started);
        if since.elapsed() < self.cluster.settings.lease {
            return;
        }
        self.rejoined = None;
        let nodes = self.cluster.nodes.load(Ordering::Acquire).max(1);
        self.parts.sites.set_sharing(Sharing::Fallback(nodes));
        for site in self.parts.sites.paths() {
            site.set_share(fallback_share(site.max_connections(), nodes), nodes as u64);
        }
        for (_, counter) in &self.parts.counters {
            counter.take_pending();
            counter.set_peers(HashMap::new(), nodes as u32);
        }
        self.fell_back = true;
    }
}

/// Every field of the hash `key`, read in pages (a long list never makes one slow call).
fn hscan(con: &mut Connection, key: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        out.extend(page);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

fn token_key(node: &str) -> String {
    format!("ringmta:node-token:{node}")
}

fn path_key(site: &Site) -> (String, Option<String>) {
    (site.name().to_owned(), site.source().map(str::to_owned))
}

fn suppression_field(user: Option<&str>, address: &str) -> String {
    format!("{}\n{address}", user.unwrap_or(""))
}
