//! Shaping rules: the limits of an egress path chosen by the destination it leads to (pure).
//!
//! A rule matches a site when its `mx` pattern matches one of the site's MX host names
//! (`*.google.com` matches `gmail-smtp-in.l.google.com`; a name without `*` must be equal), or
//! when its `domain` is the recipient domain the site was first looked up for. Operator rules
//! come first, then the built-in ones; the first match sets every limit it names, and
//! `[delivery]` gives the rest.

use super::throttle::ThrottlePolicy;

/// The limits of one egress path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Messages per second; 0 = unlimited.
    pub max_messages_per_second: u32,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: usize,
    /// The reaction to throttling replies.
    pub throttle: ThrottlePolicy,
    /// How long mail for the destination may stay queued, in ms, when shorter than
    /// `delivery.max_queue_lifetime`; `None`: that.
    pub max_queue_lifetime_ms: Option<u64>,
}

/// What a rule sets; `None` leaves the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleLimits {
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `max_messages_per_second`.
    pub max_messages_per_second: Option<u32>,
    /// `max_messages_per_connection`.
    pub max_messages_per_connection: Option<usize>,
    /// `throttle_pause`, in ms.
    pub throttle_pause_ms: Option<u64>,
    /// `blocklist_pause`, in ms.
    pub blocklist_pause_ms: Option<u64>,
    /// `throttle_ramp_step`, in ms.
    pub throttle_ramp_step_ms: Option<u64>,
    /// `max_queue_lifetime`, in ms.
    pub max_queue_lifetime_ms: Option<u64>,
}

/// One `[[shaping]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// A recipient domain (lower case), exactly.
    pub domain: Option<String>,
    /// An MX host pattern (lower case): `*.suffix` or an exact name.
    pub mx: Option<String>,
    /// What it sets.
    pub limits: RuleLimits,
    /// Where it comes from (`builtin: <provider>` or the operator's file), for `GET
    /// /api/v1/sites`.
    pub origin: String,
}

impl Rule {
    /// Whether the rule is for this site (its MX host names, space-separated) or this domain.
    pub fn matches(&self, site: &str, domain: &str) -> bool {
        self.domain.as_deref() == Some(domain)
            || self
                .mx
                .as_deref()
                .is_some_and(|p| site.split(' ').any(|host| host_matches(p, host)))
    }
}

/// `*.google.com` matches `x.google.com` and `a.b.google.com`, not `google.com`; a pattern
/// without `*` matches its own name only. Host names are compared without a trailing dot.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => host == pattern,
    }
}

/// The limits of a path to `site` (first looked up for `domain`): the first matching rule's,
/// over `defaults`. Returns the rule that matched too.
pub fn limits_for<'r>(
    rules: &'r [Rule],
    site: &str,
    domain: &str,
    defaults: PathLimits,
) -> (PathLimits, Option<&'r Rule>) {
    let Some(rule) = rules.iter().find(|r| r.matches(site, domain)) else {
        return (defaults, None);
    };
    let l = &rule.limits;
    let limits = PathLimits {
        max_connections: l.max_connections.unwrap_or(defaults.max_connections).max(1),
        max_messages_per_second: l
            .max_messages_per_second
            .unwrap_or(defaults.max_messages_per_second),
        max_messages_per_connection: l
            .max_messages_per_connection
            .unwrap_or(defaults.max_messages_per_connection)
            .max(1),
        throttle: ThrottlePolicy {
            pause_ms: l.throttle_pause_ms.unwrap_or(defaults.throttle.pause_ms),
            blocklist_pause_ms: l
                .blocklist_pause_ms
                .unwrap_or(defaults.throttle.blocklist_pause_ms),
            ramp_step_ms: l
                .throttle_ramp_step_ms
                .unwrap_or(defaults.throttle.ramp_step_ms),
        },
        max_queue_lifetime_ms: l.max_queue_lifetime_ms.or(defaults.max_queue_lifetime_ms),
    };
    (limits, Some(rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: PathLimits = PathLimits {
        max_connections: 16,
        max_messages_per_second: 0,
        max_messages_per_connection: 100,
        throttle: ThrottlePolicy {
            pause_ms: 60_000,
            blocklist_pause_ms: 3_600_000,
            ramp_step_ms: 60_000,
        },
        max_queue_lifetime_ms: None,
    };

    fn rule(domain: Option<&str>, mx: Option<&str>, conns: usize) -> Rule {
        Rule {
            domain: domain.map(Into::into),
            mx: mx.map(Into::into),
            limits: RuleLimits {
                max_connections: Some(conns),
                ..RuleLimits::default()
            },
            origin: "test".into(),
        }
    }

    #[test]
    fn host_patterns() {
        // (pattern, host, matches)
        let table = [
            ("*.google.com", "gmail-smtp-in.l.google.com", true),
            ("*.google.com", "aspmx.l.google.com.", true),
            ("*.google.com", "google.com", false),
            ("*.google.com", "notgoogle.com", false),
            ("*.google.com", "x.google.com.evil.test", false),
            ("mx.example.net", "mx.example.net", true),
            ("mx.example.net", "a.mx.example.net", false),
        ];
        for (pattern, host, want) in table {
            assert_eq!(host_matches(pattern, host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn the_first_matching_rule_sets_what_it_names_and_the_defaults_the_rest() {
        let rules = [
            rule(Some("bank.example"), None, 2),
            rule(None, Some("*.google.com"), 10),
            rule(None, Some("*.l.google.com"), 99),
        ];
        let gmail = "alt1.gmail-smtp-in.l.google.com gmail-smtp-in.l.google.com";
        let (l, r) = limits_for(&rules, gmail, "gmail.com", DEFAULTS);
        assert_eq!(l.max_connections, 10, "the first match wins");
        assert_eq!(r.unwrap().mx.as_deref(), Some("*.google.com"));
        assert_eq!(l.max_messages_per_connection, 100, "from the defaults");
        assert_eq!(l.throttle, DEFAULTS.throttle);
        let (l, _) = limits_for(&rules, "mx.bank.example", "bank.example", DEFAULTS);
        assert_eq!(l.max_connections, 2);
        let (l, r) = limits_for(&rules, "mx.other.test", "other.test", DEFAULTS);
        assert_eq!((l, r), (DEFAULTS, None));
    }
}
