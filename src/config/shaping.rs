//! `[[shaping]]`: limits per destination, matched by recipient domain or MX host pattern, with
//! the built-in rules for the big receivers (`src/config/shaping.toml`) after the operator's.

use super::raw::RawShapingRule;
use super::resolved::Resolver;
use crate::queue::shaping::{Rule, RuleLimits};

/// The built-in rules, as shipped (see `docs/delivery.md` for their sources).
const BUILTIN: &str = include_str!("shaping.toml");

/// The operator's rules, then the built-in ones.
pub(super) fn resolve(r: &mut Resolver, raw: &[RawShapingRule]) -> Vec<Rule> {
    let mut rules: Vec<Rule> = raw
        .iter()
        .enumerate()
        .map(|(i, rule)| resolve_rule(r, &format!("shaping[{i}]"), rule, "operator"))
        .collect();
    rules.extend(builtin());
    rules
}

/// The built-in rules alone.
pub fn builtin() -> Vec<Rule> {
    #[derive(serde::Deserialize)]
    struct File {
        shaping: Vec<RawShapingRule>,
    }
    // Invariant: the embedded file is fixed at build time and `builtin_rules_are_valid` loads it.
    let file: File = toml::from_str(BUILTIN).expect("built-in shaping rules parse");
    let mut r = Resolver::default();
    let rules = file
        .shaping
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let origin = format!("builtin: {}", rule.provider.as_deref().unwrap_or("?"));
            resolve_rule(&mut r, &format!("builtin shaping[{i}]"), rule, &origin)
        })
        .collect();
    assert!(r.is_clean(), "built-in shaping rules are valid");
    rules
}

fn resolve_rule(r: &mut Resolver, key: &str, raw: &RawShapingRule, origin: &str) -> Rule {
    let domain = raw
        .domain
        .as_ref()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let mx = raw
        .mx
        .as_ref()
        .map(|m| m.trim_end_matches('.').to_ascii_lowercase());
    if domain.is_none() && mx.is_none() {
        r.problem(key, "a shaping rule needs domain or mx");
    }
    if let Some(m) = &mx
        && (m.is_empty() || m.trim_start_matches("*.").contains('*'))
    {
        r.problem(
            format!("{key}.mx"),
            format!("{m:?} is not a host name or \"*.suffix\""),
        );
    }
    for (name, value) in [
        ("max_connections", raw.max_connections),
        (
            "max_messages_per_connection",
            raw.max_messages_per_connection,
        ),
    ] {
        if value == Some(0) {
            r.problem(format!("{key}.{name}"), "must be at least 1");
        }
    }
    let mut ms = |name: &str, value: Option<&String>| {
        let value = value?;
        let k = format!("{key}.{name}");
        let d = r.duration(&k, Some(value), std::time::Duration::ZERO);
        if d.is_zero() {
            r.problem(k, "must be longer than 0");
        }
        Some(d.as_millis() as u64)
    };
    Rule {
        limits: RuleLimits {
            max_connections: raw.max_connections,
            max_messages_per_second: raw.max_messages_per_second,
            max_messages_per_connection: raw.max_messages_per_connection,
            throttle_pause_ms: ms("throttle_pause", raw.throttle_pause.as_ref()),
            blocklist_pause_ms: ms("blocklist_pause", raw.blocklist_pause.as_ref()),
            throttle_ramp_step_ms: ms("throttle_ramp_step", raw.throttle_ramp_step.as_ref()),
            max_queue_lifetime_ms: ms("max_queue_lifetime", raw.max_queue_lifetime.as_ref()),
        },
        domain,
        mx,
        origin: origin.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    #[test]
    fn builtin_rules_are_valid() {
        let rules = super::builtin();
        assert!(!rules.is_empty());
        assert!(rules.iter().all(|r| r.origin.starts_with("builtin: ")));
    }

    #[test]
    fn operator_rules_come_first_and_problems_are_named() {
        let c = from_toml(
            "[[shaping]]\nmx = \"*.Google.com.\"\nmax_connections = 3\nthrottle_pause = \"5m\"\n\
             max_queue_lifetime = \"2h\"\n",
            "t",
        )
        .unwrap();
        let first = &c.shaping[0];
        assert_eq!(first.mx.as_deref(), Some("*.google.com"));
        assert_eq!(first.limits.max_connections, Some(3));
        assert_eq!(first.limits.throttle_pause_ms, Some(300_000));
        assert_eq!(first.limits.max_queue_lifetime_ms, Some(7_200_000));
        assert_eq!(first.origin, "operator");
        assert_eq!(c.shaping.len(), 1 + super::builtin().len());
        let err = from_toml(
            "[[shaping]]\nmax_connections = 0\n[[shaping]]\nmx = \"a.*.test\"\nthrottle_pause = \"0s\"\n\
             max_queue_lifetime = \"soon\"\n\
             [[users]]\nusername = \"u@x.test\"\npassword = \"p\"\nmax_queue_lifetime = \"0s\"\n\
             notify = [\"never\", \"success\"]\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "shaping[0]",
            "shaping[0].max_connections",
            "shaping[1].mx",
            "shaping[1].throttle_pause",
            "shaping[1].max_queue_lifetime",
            "users[0].max_queue_lifetime",
            "users[0].notify",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }
}
