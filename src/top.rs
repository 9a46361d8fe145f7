//! `ringmta top`: what an operator watches during an incident, refreshed from the running
//! server's HTTP API (`/metrics`, `/api/v1/queue`, `/api/v1/sites`, `/api/v1/suspensions`).
//! On a terminal it is a full-screen view (ratatui) that quits on `q`; otherwise it prints the
//! same figures every interval. The model ([`Screen`]) is pure: two samples in, rows out.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Samples of `/metrics`: each series (`name{labels}`) and its value.
#[derive(Clone, Debug, Default)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Reads the Prometheus text format (comments and unparsable lines are skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                m.insert(series.to_owned(), v);
            }
        }
        Metrics(m)
    }

    /// The sum of every series of the family `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).map(|(_, v)| v).sum()
    }

    /// The series of `name` with their value of `label`, summed per value.
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (series, v) in self.series(name) {
            let key = label_value(series, label).unwrap_or_default();
            *out.entry(key).or_insert(0.0) += v;
        }
        out
    }

    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0
            .range(name.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(name))
            .filter(move |(k, _)| k.len() == name.len() || k[name.len()..].starts_with('{'))
            .map(|(k, v)| (k.as_str(), *v))
    }
}

fn label_value(series: &str, label: &str) -> Option<String> {
    let labels = series.split_once('{')?.1.strip_suffix('}')?;
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = &labels[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// One reading of the API.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// When it was taken (monotonic).
    pub at: Option<Instant>,
    /// `/metrics`.
    pub metrics: Metrics,
    /// `/api/v1/queue`.
    pub queue: serde_json::Value,
    /// `/api/v1/sites`.
    pub sites: serde_json::Value,
    /// `/api/v1/suspensions`.
    pub suspensions: serde_json::Value,
}

/// One row of the destinations or sites table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Domain or site.
    pub name: String,
    /// Recipients pending.
    pub pending: u64,
    /// Connections open / allowed (sites only).
    pub connections: String,
    /// `throttled`, `suspended` or empty.
    pub state: String,
}

/// What the screen shows, computed from the last two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Screen {
    /// Per-second rates since the previous sample (None on the first).
    pub accepted: Option<f64>,
    /// Delivered per second.
    pub delivered: Option<f64>,
    /// Deferred per second.
    pub deferred: Option<f64>,
    /// Bounced per second.
    pub bounced: Option<f64>,
    /// Failures per second by category, busiest first (only those above zero).
    pub failures: Vec<(String, f64)>,
    /// Inbound connections open.
    pub connections_in: u64,
    /// Outbound connections open.
    pub connections_out: u64,
    /// Recipients pending.
    pub pending: u64,
    /// Spool bytes and limit (0: none).
    pub spool: (u64, u64),
    /// Shards stopped after an fdatasync failure.
    pub shards_failed: u64,
    /// Busiest destination domains.
    pub destinations: Vec<Row>,
    /// Busiest sites.
    pub sites: Vec<Row>,
}

/// How the summary line about a stopped shard starts.
const DURABILITY: &str = "DURABILITY STOPPED";

/// How many rows each table shows.
pub const ROWS: usize = 10;

impl Screen {
    /// The figures of `cur`, with rates against `prev`.
    pub fn new(prev: Option<&Sample>, cur: &Sample) -> Screen {
        let elapsed = match (prev.and_then(|p| p.at), cur.at) {
            (Some(a), Some(b)) if b > a => Some((b - a).as_secs_f64()),
            _ => None,
        };
        let rate = |f: &dyn Fn(&Metrics) -> f64| {
            let (p, secs) = (prev?, elapsed?);
            Some(((f(&cur.metrics) - f(&p.metrics)) / secs).max(0.0))
        };
        let outcome = |o: &'static str| {
            move |m: &Metrics| {
                m.by("ringmta_deliveries_total", "outcome")
                    .get(o)
                    .copied()
                    .unwrap_or(0.0)
            }
        };
        let mut failures: Vec<(String, f64)> = match (prev, elapsed) {
            (Some(p), Some(secs)) => {
                let before = p.metrics.by("ringmta_delivery_failures_total", "category");
                cur.metrics
                    .by("ringmta_delivery_failures_total", "category")
                    .into_iter()
                    .map(|(k, v)| {
                        let r = (v - before.get(&k).copied().unwrap_or(0.0)) / secs;
                        (k, r)
                    })
                    .filter(|(_, r)| *r > 0.0)
                    .collect()
            }
            _ => Vec::new(),
        };
        failures.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let suspended = |kind: &str, name: &str| {
            cur.suspensions.as_array().is_some_and(|list| {
                list.iter().any(|s| {
                    s["target"][kind]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(name))
                })
            })
        };
        let counts = |v: &serde_json::Value| -> Vec<(String, u64)> {
            let mut rows: Vec<(String, u64)> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            rows.truncate(ROWS);
            rows
        };
        let destinations = counts(&cur.queue["destinations"])
            .into_iter()
            .map(|(name, pending)| Row {
                state: if suspended("domain", &name) {
                    "suspended"
                } else {
                    ""
                }
                .to_owned(),
                name,
                pending,
                connections: String::new(),
            })
            .collect();
        let paths = cur.sites.as_array().cloned().unwrap_or_default();
        let sites = counts(&cur.queue["sites"])
            .into_iter()
            .map(|(site, pending)| {
                let mine = paths.iter().filter(|p| p["site"] == site.as_str());
                let (open, limit, throttled) = mine.fold((0, 0, false), |(o, l, t), p| {
                    (
                        o + p["connections"].as_u64().unwrap_or(0),
                        l + p["connection_limit"].as_u64().unwrap_or(0),
                        t || p["throttled"] == true,
                    )
                });
                let state = if suspended("site", &site) {
                    "suspended"
                } else if throttled {
                    "throttled"
                } else {
                    ""
                };
                Row {
                    name: if site.is_empty() {
                        "(not resolved yet)".to_owned()
                    } else {
                        site
                    },
                    pending,
                    connections: format!("{open}/{limit}"),
                    state: state.to_owned(),
                }
            })
            .collect();
        let m = &cur.metrics;
        Screen {
            accepted: rate(&|m| m.sum("ringmta_messages_accepted_total")),
            delivered: rate(&outcome("delivered")),
            deferred: rate(&outcome("deferred")),
            bounced: rate(&outcome("bounced")),
            failures,
            connections_in: m.sum("ringmta_connections_open") as u64,
            connections_out: m.sum("ringmta_path_connections") as u64,
            // Live from the queue API (the gauge is refreshed once a second).
            pending: cur.queue["destinations"]
                .as_object()
                .map_or(0, |d| d.values().filter_map(|n| n.as_u64()).sum()),
            spool: (
                m.sum("ringmta_spool_bytes") as u64,
                m.sum("ringmta_spool_limit_bytes") as u64,
            ),
            shards_failed: m.sum("ringmta_spool_shards_failed") as u64,
            destinations,
            sites,
        }
    }

    /// The summary lines above the tables.
    pub fn summary(&self) -> Vec<String> {
        let r = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let limit = if self.spool.1 == 0 {
            "no limit".to_owned()
        } else {
            format!("of {}", bytes(self.spool.1))
        };
        let mut lines = vec![
            format!(
                "per second: accepted {}  delivered {}  deferred {}  bounced {}",
                r(self.accepted),
                r(self.delivered),
                r(self.deferred),
                r(self.bounced)
            ),
            format!(
                "connections: in {}  out {}    pending recipients: {}    spool: {} ({limit})",
                self.connections_in,
                self.connections_out,
                self.pending,
                bytes(self.spool.0)
            ),
        ];
        if self.shards_failed > 0 {
            lines.push(format!(
                "{DURABILITY}: {} spool shard(s) failed an fdatasync; restart after checking the disk",
                self.shards_failed
            ));
        }
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(c, v)| format!("{c} {v:.1}"))
            .collect();
        lines.push(format!(
            "failures per second by category: {}",
            if failures.is_empty() {
                "none".to_owned()
            } else {
                failures.join("  ")
            }
        ));
        lines
    }

    /// Everything as plain text (the non-terminal output).
    pub fn plain(&self) -> String {
        let mut out = self.summary().join("\n");
        out.push_str("\n\n");
        out += &format!("{:<40} {:>9}  {}\n", "DESTINATION", "PENDING", "STATE");
        for r in &self.destinations {
            out += &format!("{:<40} {:>9}  {}\n", r.name, r.pending, r.state);
        }
        out += &format!(
            "\n{:<40} {:>9} {:>9}  {}\n",
            "SITE", "PENDING", "CONN", "STATE"
        );
        for r in &self.sites {
            out += &format!(
                "{:<40} {:>9} {:>9}  {}\n",
                r.name, r.pending, r.connections, r.state
            );
        }
        out
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Takes one sample through `get` (a path → the body of a 2xx).
pub fn sample(get: &dyn Fn(&str) -> Result<String>) -> Result<Sample> {
    let json = |path: &str| -> Result<serde_json::Value> { Ok(serde_json::from_str(&get(path)?)?) };
    Ok(Sample {
        at: Some(Instant::now()),
        metrics: Metrics::parse(&get("/metrics")?),
        queue: json("/api/v1/queue")?,
        sites: json("/api/v1/sites")?,
        suspensions: json("/api/v1/suspensions")?,
    })
}

/// Runs the view: full screen on a terminal until `q` (or Esc, Ctrl-C), else `count` plain
/// prints (forever without one), `interval` apart.
pub fn run(
    get: &dyn Fn(&str) -> Result<String>,
    target: &str,
    interval: Duration,
    count: Option<u64>,
) -> Result<()> {
    if std::io::stdout().is_terminal() && count.is_none() {
        return full_screen(get, target, interval);
    }
    let mut prev: Option<Sample> = None;
    let mut n = 0;
    loop {
        let cur = sample(get)?;
        println!(
            "ringmta top  {target}  {}\n{}",
            crate::rfc5322::date(std::time::SystemTime::now()),
            Screen::new(prev.as_ref(), &cur).plain()
        );
        prev = Some(cur);
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

fn full_screen(
    get: &dyn Fn(&str) -> Result<String>,
    target: &str,
    interval: Duration,
) -> Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Color, Modifier, Style};
    use ratatui::text::Line;
    use ratatui::widgets::{Block, Borders, Paragraph, Row as TRow, Table};

    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut prev: Option<Sample> = None;
        let mut last_error = None;
        loop {
            let (screen, cur) = match sample(get) {
                Ok(cur) => (Some(Screen::new(prev.as_ref(), &cur)), Some(cur)),
                Err(e) => {
                    last_error = Some(e.to_string());
                    (None, None)
                }
            };
            let title = format!(
                " ringmta top  {target}  {}  (q quits) ",
                crate::rfc5322::date(std::time::SystemTime::now())
            );
            terminal.draw(|f| {
                let area = f.area();
                let Some(screen) = &screen else {
                    let text = format!(
                        "cannot read the API: {}",
                        last_error.clone().unwrap_or_default()
                    );
                    f.render_widget(
                        Paragraph::new(text)
                            .block(Block::default().borders(Borders::ALL).title(title.clone())),
                        area,
                    );
                    return;
                };
                let summary = screen.summary();
                let [top, tables] = Layout::vertical([
                    Constraint::Length(summary.len() as u16 + 2),
                    Constraint::Min(0),
                ])
                .areas(area);
                // The durability line is red: the one thing on this screen that needs a person.
                let lines: Vec<Line> = summary
                    .iter()
                    .map(|l| {
                        if l.starts_with(DURABILITY) {
                            Line::styled(
                                l.clone(),
                                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                            )
                        } else {
                            Line::raw(l.clone())
                        }
                    })
                    .collect();
                f.render_widget(
                    Paragraph::new(lines)
                        .block(Block::default().borders(Borders::ALL).title(title.clone())),
                    top,
                );
                let [left, right] =
                    Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                        .areas(tables);
                let bold = Style::default().add_modifier(Modifier::BOLD);
                let dest = Table::new(
                    screen.destinations.iter().map(|r| {
                        TRow::new(vec![r.name.clone(), r.pending.to_string(), r.state.clone()])
                    }),
                    [
                        Constraint::Min(20),
                        Constraint::Length(9),
                        Constraint::Length(10),
                    ],
                )
                .header(TRow::new(vec!["destination", "pending", "state"]).style(bold))
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" busiest destinations "),
                );
                f.render_widget(dest, left);
                let sites = Table::new(
                    screen.sites.iter().map(|r| {
                        TRow::new(vec![
                            r.name.clone(),
                            r.pending.to_string(),
                            r.connections.clone(),
                            r.state.clone(),
                        ])
                    }),
                    [
                        Constraint::Min(20),
                        Constraint::Length(9),
                        Constraint::Length(7),
                        Constraint::Length(10),
                    ],
                )
                .header(TRow::new(vec!["site", "pending", "conn", "state"]).style(bold))
                .block(Block::default().borders(Borders::ALL).title(" sites "));
                f.render_widget(sites, right);
            })?;
            if cur.is_some() {
                prev = cur;
            }
            let deadline = Instant::now() + interval;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if event::poll(left)?
                    && let Event::Key(k) = event::read()?
                {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE ringmta_messages_accepted_total counter\n\
        ringmta_messages_accepted_total 100\n\
        ringmta_deliveries_total{outcome=\"delivered\"} 50\n\
        ringmta_deliveries_total{outcome=\"deferred\"} 10\n\
        ringmta_deliveries_total{outcome=\"bounced\"} 0\n\
        ringmta_delivery_failures_total{category=\"tls\"} 4\n\
        ringmta_delivery_failures_total{category=\"rate_limited\"} 6\n\
        ringmta_connections_open 3\n\
        ringmta_spool_bytes 2048\nringmta_spool_limit_bytes 0\nringmta_spool_shards_failed 0\n";

    fn sample(metrics: &str, at: Instant) -> Sample {
        Sample {
            at: Some(at),
            metrics: Metrics::parse(metrics),
            queue: serde_json::json!({"destinations": {"a.example": 30, "b.example": 12},
                                      "sites": {"mx.a.example": 30, "": 12}}),
            sites: serde_json::json!([{"site": "mx.a.example", "connections": 2,
                                       "connection_limit": 5, "throttled": true}]),
            suspensions: serde_json::json!([{"target": {"domain": "b.example"}}]),
        }
    }

    #[test]
    fn rates_come_from_two_samples_and_rows_from_the_api() {
        let t0 = Instant::now();
        let first = sample(METRICS, t0);
        let later = METRICS
            .replace("accepted_total 100", "accepted_total 120")
            .replace("\"delivered\"} 50", "\"delivered\"} 60")
            .replace("\"tls\"} 4", "\"tls\"} 8");
        let second = sample(&later, t0 + Duration::from_secs(2));
        let s = Screen::new(None, &first);
        assert_eq!(s.accepted, None);
        assert!(s.summary()[0].contains("accepted -"), "{:?}", s.summary());
        let s = Screen::new(Some(&first), &second);
        assert_eq!(s.accepted, Some(10.0));
        assert_eq!(s.delivered, Some(5.0));
        assert_eq!(s.deferred, Some(0.0));
        assert_eq!(s.failures, vec![("tls".to_owned(), 2.0)]);
        assert_eq!((s.connections_in, s.pending), (3, 42), "30 + 12 queued");
        assert_eq!(s.destinations[0].name, "a.example");
        assert_eq!(s.destinations[1].state, "suspended");
        assert_eq!(
            s.sites[0],
            Row {
                name: "mx.a.example".into(),
                pending: 30,
                connections: "2/5".into(),
                state: "throttled".into()
            }
        );
        assert_eq!(s.sites[1].name, "(not resolved yet)");
        let text = s.plain();
        assert!(
            text.contains("per second: accepted 10.0  delivered 5.0"),
            "{text}"
        );
        assert!(text.contains("spool: 2.0 KiB (no limit)"), "{text}");
    }

    #[test]
    fn a_family_is_not_confused_with_a_longer_name() {
        let m = Metrics::parse("ringmta_spool_bytes 5\nringmta_spool_bytes_extra 7\n");
        assert_eq!(m.sum("ringmta_spool_bytes"), 5.0);
        assert_eq!(label_value("x{a=\"1\",b=\"two\"}", "b"), Some("two".into()));
    }
}
