//! The queue's shape, as Postfix's `qshape` shows it: pending recipients counted by a key (the
//! destination domain, the sender's domain, the user, the site or the state) and by how long
//! their message has been queued, in buckets whose bounds double: 5, 10, 20, 40, 80, 160, 320
//! and 640 minutes, one day, then older. Pure: the caller gives the ages.

use std::collections::BTreeMap;

use serde::Serialize;

/// The upper bounds of the age buckets, in minutes; the last bucket holds everything older.
pub const BOUNDS_MIN: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1440];

/// How many buckets a row has.
pub const BUCKETS: usize = BOUNDS_MIN.len() + 1;

/// The column labels: each bucket's upper bound in minutes, then `+1440` for older.
pub fn labels() -> Vec<String> {
    BOUNDS_MIN
        .iter()
        .map(u64::to_string)
        .chain(std::iter::once(format!(
            "+{}",
            BOUNDS_MIN[BOUNDS_MIN.len() - 1]
        )))
        .collect()
}

/// The bucket of an age in milliseconds. An age on a bound goes to the bucket it closes
/// (5 minutes exactly is in the first).
pub fn bucket(age_ms: u64) -> usize {
    BOUNDS_MIN
        .iter()
        .position(|&m| age_ms <= m * 60_000)
        .unwrap_or(BOUNDS_MIN.len())
}

/// What the rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// The recipient's domain (the default, as qshape's).
    Domain,
    /// The domain of the envelope sender (`<>` for the null sender).
    Sender,
    /// The authenticated user who submitted the message (`-` for none).
    User,
    /// The destination site: filled in from the domains by whoever knows the sites.
    Site,
    /// The recipient's state (queued, deferred).
    State,
}

impl By {
    /// Parses `domain`, `sender`, `user`, `site` or `state`.
    pub fn parse(s: &str) -> Option<By> {
        Some(match s {
            "domain" => By::Domain,
            "sender" => By::Sender,
            "user" => By::User,
            "site" => By::Site,
            "state" => By::State,
            _ => return None,
        })
    }

    /// The row key of one pending recipient. For [`By::Site`] it is the domain, which the
    /// caller maps to its site.
    pub fn key(
        self,
        recipient: &str,
        reverse_path: &str,
        user: Option<&str>,
        state: &str,
    ) -> String {
        match self {
            By::Domain | By::Site => domain(recipient),
            By::Sender if reverse_path.is_empty() => "<>".to_owned(),
            By::Sender => domain(reverse_path),
            By::User => user.unwrap_or("-").to_owned(),
            By::State => state.to_owned(),
        }
    }
}

/// The domain of an address, lower case, without a trailing dot (as the queue API keys it).
fn domain(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Counts by key and age bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    rows: BTreeMap<String, [u64; BUCKETS]>,
}

/// One row of the table, for JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The key (a domain, a user…).
    pub key: String,
    /// Every bucket added up.
    pub total: u64,
    /// Per bucket, youngest first.
    pub counts: Vec<u64>,
}

impl Shape {
    /// Counts one pending recipient under `key`, queued for `age_ms`.
    pub fn add(&mut self, key: String, age_ms: u64) {
        self.rows.entry(key).or_insert([0; BUCKETS])[bucket(age_ms)] += 1;
    }

    /// Counts the pending recipients of one message queued for `age_ms`: the address and state
    /// name of each recipient not final yet.
    pub fn add_message<'a>(
        &mut self,
        by: By,
        age_ms: u64,
        (reverse_path, user): (&str, Option<&str>),
        pending: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (address, state) in pending {
            self.add(by.key(address, reverse_path, user, state), age_ms);
        }
    }

    /// Adds another shape's counts (another core's), renaming each key through `rename` (a
    /// domain to its site).
    pub fn merge(&mut self, other: Shape, rename: impl Fn(String) -> String) {
        for (key, counts) in other.rows {
            let row = self.rows.entry(rename(key)).or_insert([0; BUCKETS]);
            for (a, b) in row.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }

    /// The rows, most recipients first (ties by key), preceded by the `TOTAL` row.
    pub fn rows(&self) -> Vec<Row> {
        let mut total = [0u64; BUCKETS];
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(key, counts)| {
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
                Row {
                    key: key.clone(),
                    total: counts.iter().sum(),
                    counts: counts.to_vec(),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
        rows.insert(
            0,
            Row {
                key: "TOTAL".to_owned(),
                total: total.iter().sum(),
                counts: total.to_vec(),
            },
        );
        rows
    }

    /// The rows as `{"by", "buckets", "rows"}` JSON.
    pub fn json(&self, by: By) -> serde_json::Value {
        serde_json::json!({ "by": by, "buckets": labels(), "rows": self.rows() })
    }

    /// Reads back what [`Shape::json`] wrote (its first row, the total, is recomputed).
    pub fn from_json(v: &serde_json::Value) -> Option<Shape> {
        let mut shape = Shape::default();
        for row in v["rows"].as_array()?.iter().skip(1) {
            let key = row["key"].as_str()?;
            let mut counts = [0u64; BUCKETS];
            for (c, n) in counts.iter_mut().zip(row["counts"].as_array()?) {
                *c = n.as_u64()?;
            }
            shape.rows.insert(key.to_owned(), counts);
        }
        Some(shape)
    }

    /// The table as qshape prints it: a header of bucket bounds, the `TOTAL` row, then at most
    /// `limit` rows, right-aligned.
    pub fn table(&self, limit: usize) -> String {
        let rows = self.rows();
        let width = rows
            .iter()
            .take(limit.saturating_add(1))
            .map(|r| r.key.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:>width$} {:>6}", "", "T");
        for label in labels() {
            out += &format!(" {label:>6}");
        }
        out.push('\n');
        for row in rows.iter().take(limit.saturating_add(1)) {
            out += &format!("{:>width$} {:>6}", row.key, row.total);
            for c in &row.counts {
                out += &format!(" {c:>6}");
            }
            out.push('\n');
        }
        if rows.len() > limit.saturating_add(1) {
            out += &format!(
                "({} more rows; --limit N shows them)\n",
                rows.len() - limit - 1
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn ages_fall_in_the_bucket_their_bound_closes() {
        let table = [
            (0, 0),
            (5 * MIN, 0),
            (5 * MIN + 1, 1),
            (10 * MIN, 1),
            (11 * MIN, 2),
            (639 * MIN, 7),
            (641 * MIN, 8),
            (1440 * MIN, 8),
            (1440 * MIN + 1, 9),
            (30 * 1440 * MIN, 9),
        ];
        for (age, want) in table {
            assert_eq!(bucket(age), want, "age {} min", age / MIN);
        }
        assert_eq!(labels().len(), BUCKETS);
        assert_eq!(labels()[0], "5");
        assert_eq!(labels()[BUCKETS - 1], "+1440");
    }

    #[test]
    fn keys_follow_the_chosen_grouping() {
        let key = |by: By| {
            by.key(
                "Bob@Example.NET",
                "alice@app.example",
                Some("app"),
                "deferred",
            )
        };
        assert_eq!(key(By::Domain), "example.net");
        assert_eq!(
            By::Domain.key("b@Example.NET.", "", None, "queued"),
            "example.net"
        );
        assert_eq!(key(By::Site), "example.net");
        assert_eq!(key(By::Sender), "app.example");
        assert_eq!(key(By::User), "app");
        assert_eq!(key(By::State), "deferred");
        assert_eq!(By::Sender.key("b@x", "", None, "queued"), "<>");
        assert_eq!(By::User.key("b@x", "", None, "queued"), "-");
        assert_eq!(By::parse("site"), Some(By::Site));
        assert_eq!(By::parse("mx"), None);
    }

    #[test]
    fn rows_are_sorted_by_volume_under_a_total_and_merge_by_renamed_key() {
        let mut a = Shape::default();
        a.add("small.example".into(), 0);
        a.add("big.example".into(), 0);
        a.add("big.example".into(), 30 * MIN);
        let mut b = Shape::default();
        b.add("big.example".into(), 2 * 1440 * MIN);
        b.add("other.example".into(), 0);
        let mut merged = Shape::default();
        merged.merge(a.clone(), |k| k);
        merged.merge(b, |k| k);
        let rows = merged.rows();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["TOTAL", "big.example", "other.example", "small.example"]
        );
        assert_eq!(rows[0].total, 5);
        assert_eq!(rows[1].counts, [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        // Renaming folds rows together (domains into their site).
        let mut sites = Shape::default();
        sites.merge(a, |_| "site-1".to_owned());
        assert_eq!(sites.rows()[1].total, 3);
        // JSON round trip, a user called TOTAL included.
        merged.add("TOTAL".into(), 0);
        let back = Shape::from_json(&merged.json(By::Domain)).unwrap();
        assert_eq!(back, merged);
    }

    #[test]
    fn the_table_has_a_header_a_total_and_at_most_limit_rows() {
        let mut s = Shape::default();
        for i in 0..5 {
            for _ in 0..=i {
                s.add(format!("d{i}.example"), 0);
            }
        }
        let table = s.table(2);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].trim_start().starts_with("T      5     10"),
            "{table}"
        );
        assert!(
            lines[1].trim_start().starts_with("TOTAL     15     15"),
            "{table}"
        );
        assert!(
            lines[2].trim_start().starts_with("d4.example      5"),
            "{table}"
        );
        assert!(
            lines[3].trim_start().starts_with("d3.example      4"),
            "{table}"
        );
        assert_eq!(lines[4], "(3 more rows; --limit N shows them)");
        assert_eq!(lines.len(), 5);
        assert_eq!(s.table(usize::MAX).lines().count(), 7);
    }
}
