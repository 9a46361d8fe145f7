//! Counters and gauges for `/metrics`, in the Prometheus text format.
//!
//! Each worker owns one `CoreMetrics` and is its only writer (relaxed atomic adds on memory no
//! other core writes, so nothing on the hot path contends); the HTTP thread only reads. Latency
//! histograms use fixed buckets of atomic counters, which is what a Prometheus histogram is.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::bounce::classify::Category;
use crate::queue::throttle::Signal;
use crate::spool::RecipientStatus;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a message that reached the end of DATA was not accepted.
#[derive(Clone, Copy, Debug)]
pub enum RejectReason {
    /// The spool is full (452 4.3.1).
    SpoolFull,
    /// The spool failed (451 4.3.0).
    SpoolIo,
    /// A content check refused it (validation, malware, spam, scanner down).
    Content,
}

/// Delivery attempt outcome, per recipient.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Accepted by the next hop.
    Delivered,
    /// Will be retried.
    Deferred,
    /// Final failure.
    Bounced,
}

/// One worker's metrics.
#[derive(Default)]
pub struct CoreMetrics {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused, by [`Refusal`].
    pub connections_refused: [AtomicU64; 3],
    /// MAIL commands refused by the per-address message rate.
    pub mail_rate_refused: AtomicU64,
    /// accept(2) failures (EMFILE, ENFILE, ENOMEM...): the listener backs off and retries.
    pub accept_errors: AtomicU64,
    /// Messages acknowledged with 250.
    pub messages_accepted: AtomicU64,
    rejected: [AtomicU64; 3],
    outcomes: [AtomicU64; 3],
    categories: [AtomicU64; 16],
    /// DSNs queued.
    pub dsns: AtomicU64,
    /// Sites throttled by their receiver's reply: `rate_limited`, `blocklisted`.
    throttles: [AtomicU64; 2],
    /// Recipients' attempts that got a reply, by how the connection was protected
    /// ([`TLS_USES`]).
    outbound_tls: [AtomicU64; 7],
    /// Spool bytes (segment files), refreshed every second.
    pub spool_bytes: AtomicU64,
    /// The shard's byte limit for new mail (`spool.max_size`, 0: none), refreshed every second.
    pub spool_limit_bytes: AtomicU64,
    /// 1 once the shard stopped writing after an fdatasync failure.
    pub spool_failed: AtomicU64,
    /// Spool records, refreshed every second.
    pub spool_records: AtomicU64,
    /// Records lost to damage in the middle of segments, found by recovery at start.
    pub spool_lost_records: AtomicU64,
    /// Messages in the spool (queued or final, not purged), refreshed every second.
    pub spool_messages: AtomicU64,
    /// Recipients not yet final, refreshed every second.
    pub queue_pending: AtomicU64,
    /// Recipients by state, indexed by [`RecipientStatus`], refreshed every second.
    pub recipients_by_state: [AtomicU64; RecipientStatus::ALL.len()],
    /// From the end of DATA to the 250 (content checks, append, fdatasync).
    pub accept_latency: Histogram,
    /// One delivery transaction, from taking the job to its outcome.
    pub delivery_latency: Histogram,
}

impl CoreMetrics {
    /// Counts a refused message.
    pub fn reject(&self, why: RejectReason) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages refused for this reason so far.
    pub fn rejected(&self, why: RejectReason) -> u64 {
        load(&self.rejected[why as usize])
    }

    /// Counts one recipient's attempt outcome (and its category when it failed).
    pub fn outcome(&self, o: Outcome, category: Option<Category>) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(c) = category {
            self.categories[c as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The label values of `ringmta_outbound_tls_total{use}`: the TLS policy that applied when the
/// session was encrypted, `plaintext` when an opportunistic one was not, `none` when TLS is
/// disabled.
pub const TLS_USES: [&str; 7] = [
    "none",
    "plaintext",
    "opportunistic",
    "required",
    "verify",
    "mta-sts",
    "dane",
];

/// Why a connection was refused at accept; indexes `CoreMetrics::connections_refused`.
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// `limits.max_connections_per_core`.
    PerCore = 0,
    /// `limits.max_connections_per_ip`.
    PerIp = 1,
    /// `limits.connection_rate_per_ip`.
    Rate = 2,
}

/// Label values of [`Refusal`], in order.
const REFUSALS: [&str; 3] = ["per_core", "per_ip", "rate"];

impl CoreMetrics {
    /// Counts one recipient's attempt over a connection protected as `tls_use` says (an index
    /// of [`TLS_USES`]).
    pub fn outbound_tls(&self, tls_use: usize) {
        if let Some(c) = self.outbound_tls.get(tls_use) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a site throttled by its receiver.
    pub fn throttled(&self, signal: Signal) {
        self.throttles[signal as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused at accept.
    pub fn refuse(&self, why: Refusal) {
        self.connections_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

fn sum(cores: &[std::sync::Arc<CoreMetrics>], f: impl Fn(&CoreMetrics) -> u64) -> u64 {
    cores.iter().map(|c| f(c)).sum()
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric, summed over the cores, in the Prometheus text exposition format.
pub fn render(cores: &[std::sync::Arc<CoreMetrics>]) -> String {
    let mut out = String::with_capacity(8192);
    let mut simple = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    simple(
        "ringmta_connections_open",
        "gauge",
        "SMTP connections open now.",
        sum(cores, |c| load(&c.connections_open)),
    );
    simple(
        "ringmta_connections_total",
        "counter",
        "SMTP connections accepted.",
        sum(cores, |c| load(&c.connections_total)),
    );
    simple(
        "ringmta_accept_errors_total",
        "counter",
        "accept(2) failures (out of descriptors or memory); the listener backs off 50 ms.",
        sum(cores, |c| load(&c.accept_errors)),
    );
    simple(
        "ringmta_mail_rate_refused_total",
        "counter",
        "MAIL commands refused by limits.message_rate_per_ip (450 4.7.1).",
        sum(cores, |c| load(&c.mail_rate_refused)),
    );
    simple(
        "ringmta_messages_accepted_total",
        "counter",
        "Messages acknowledged with 250 (durable).",
        sum(cores, |c| load(&c.messages_accepted)),
    );
    simple(
        "ringmta_dsns_total",
        "counter",
        "Delivery status notifications queued.",
        sum(cores, |c| load(&c.dsns)),
    );
    simple(
        "ringmta_spool_bytes",
        "gauge",
        "Bytes of spool segment files.",
        sum(cores, |c| load(&c.spool_bytes)),
    );
    simple(
        "ringmta_spool_limit_bytes",
        "gauge",
        "spool.max_size over every worker (0: no limit); new mail is refused past it.",
        sum(cores, |c| load(&c.spool_limit_bytes)),
    );
    simple(
        "ringmta_spool_shards_failed",
        "gauge",
        "Spool shards that stopped writing after an fdatasync failure (restart to recover).",
        sum(cores, |c| load(&c.spool_failed)),
    );
    simple(
        "ringmta_spool_records",
        "gauge",
        "Records in the spool segments.",
        sum(cores, |c| load(&c.spool_records)),
    );
    simple(
        "ringmta_spool_damaged_records",
        "gauge",
        "Records lost to damage in spool segments (in the middle, or at the end when the next \
         segment counted them), found at start; `ringmta spool check` lists where.",
        sum(cores, |c| load(&c.spool_lost_records)),
    );
    simple(
        "ringmta_spool_messages",
        "gauge",
        "Messages in the spool (queued or final, content not purged).",
        sum(cores, |c| load(&c.spool_messages)),
    );
    simple(
        "ringmta_queue_pending_recipients",
        "gauge",
        "Recipients not yet delivered or bounced.",
        sum(cores, |c| load(&c.queue_pending)),
    );

    // The limit holds per shard, so the alert that matters is on the fullest one.
    let fullest = cores
        .iter()
        .filter(|c| load(&c.spool_limit_bytes) > 0)
        .map(|c| load(&c.spool_bytes) as f64 / load(&c.spool_limit_bytes) as f64)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "# HELP ringmta_spool_fullest_ratio The fullest spool shard's bytes over its spool.max_size \
         (0 without a limit).\n# TYPE ringmta_spool_fullest_ratio gauge\nringmta_spool_fullest_ratio {fullest}"
    );

    let summed = |f: &dyn Fn(&CoreMetrics) -> u64| sum(cores, f);
    labelled(
        &mut out,
        ("ringmta_queue_recipients", "gauge", "state"),
        "Recipients in the spool by delivery state.",
        RecipientStatus::ALL.iter().map(|&s| {
            (
                s.name(),
                summed(&|c| load(&c.recipients_by_state[s as usize])),
            )
        }),
    );
    labelled(
        &mut out,
        ("ringmta_connections_refused_total", "counter", "reason"),
        "SMTP connections refused with 421 at accept, by limit.",
        REFUSALS
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, summed(&|c| load(&c.connections_refused[i])))),
    );
    labelled(
        &mut out,
        ("ringmta_messages_rejected_total", "counter", "reason"),
        "Messages refused at the end of DATA, by reason.",
        ["spool_full", "spool_io", "content"]
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, summed(&|c| load(&c.rejected[i])))),
    );
    labelled(
        &mut out,
        ("ringmta_deliveries_total", "counter", "outcome"),
        "Delivery attempt outcomes per recipient.",
        ["delivered", "deferred", "bounced"]
            .iter()
            .enumerate()
            .map(|(i, o)| (*o, summed(&|c| load(&c.outcomes[i])))),
    );
    labelled(
        &mut out,
        ("ringmta_outbound_tls_total", "counter", "use"),
        "Recipients' delivery attempts that got a reply, by the protection of the connection: the TLS policy that applied when encrypted (opportunistic, required, verify, mta-sts), plaintext, or none (tls disabled).",
        TLS_USES
            .iter()
            .enumerate()
            .map(|(i, u)| (*u, summed(&|c| load(&c.outbound_tls[i])))),
    );
    labelled(
        &mut out,
        ("ringmta_site_throttles_total", "counter", "signal"),
        "Destination sites paused by a rate_limited or blocklisted reply (delivery.throttle_pause).",
        [Signal::RateLimited, Signal::Blocklisted]
            .iter()
            .map(|s| (s.name(), summed(&|c| load(&c.throttles[*s as usize])))),
    );
    labelled(
        &mut out,
        ("ringmta_delivery_failures_total", "counter", "category"),
        "Failed attempts (deferred or bounced) by bounce category.",
        Category::ALL.iter().map(|&cat| {
            let n = summed(&|c| load(&c.categories[cat as usize]));
            (cat.name(), n)
        }),
    );
    histogram(
        &mut out,
        "ringmta_accept_latency_seconds",
        "From the end of DATA to the 250 reply.",
        cores,
        |c| &c.accept_latency,
    );
    histogram(
        &mut out,
        "ringmta_delivery_latency_seconds",
        "One outbound delivery transaction.",
        cores,
        |c| &c.delivery_latency,
    );
    out
}

/// One metric with one label: `(name, type, label)`, its help line and `(label value, value)`
/// samples.
fn labelled<'a>(
    out: &mut String,
    (name, kind, label): (&str, &str, &str),
    help: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    cores: &[std::sync::Arc<CoreMetrics>],
    pick: impl Fn(&CoreMetrics) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, b) in BUCKETS_US.iter().enumerate() {
        cumulative += sum(cores, |c| load(&pick(c).counts[i]));
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *b as f64 / 1e6
        );
    }
    let count = sum(cores, |c| load(&pick(c).count));
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        sum(cores, |c| load(&pick(c).sum_us)) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn render_sums_cores_and_builds_cumulative_buckets() {
        let a = Arc::new(CoreMetrics::default());
        let b = Arc::new(CoreMetrics::default());
        a.messages_accepted.fetch_add(3, Ordering::Relaxed);
        b.messages_accepted.fetch_add(4, Ordering::Relaxed);
        a.accept_latency.observe(Duration::from_micros(300));
        b.accept_latency.observe(Duration::from_millis(3));
        b.accept_latency.observe(Duration::from_secs(60));
        a.outcome(Outcome::Bounced, Some(Category::UserUnknown));
        b.reject(RejectReason::SpoolFull);
        let text = render(&[a, b]);
        assert!(
            text.contains("\nringmta_messages_accepted_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_accept_latency_seconds_bucket{le=\"0.00025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_accept_latency_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_accept_latency_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_accept_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_accept_latency_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_deliveries_total{outcome=\"bounced\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_delivery_failures_total{category=\"user_unknown\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmta_messages_rejected_total{reason=\"spool_full\"} 1\n"),
            "{text}"
        );
    }
}
