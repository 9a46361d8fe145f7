//! Loading a rule file: TOML tables to rules, every problem named by its 1-based rule number.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use regex::{Regex, RegexBuilder};

use super::reply_text::number;

use super::rules::{CodeMatch, EnhancedMatch, Rule, RuleAction, RuleSet};
use super::{Action, Category, ClassifierError, ConnFailure, RuleProblem};

pub(super) const RULE_KEYS: [&str; 7] = [
    "id",
    "code",
    "enhanced",
    "pattern",
    "connection",
    "category",
    "action",
];

pub(super) fn parse_rule_file(text: &str, origin: &str) -> Result<RuleSet, ClassifierError> {
    let table: toml::Table = toml::from_str(text).map_err(|source| ClassifierError::Syntax {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    let mut problems = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut ids: HashMap<&'static str, usize> = HashMap::new();

    for key in table.keys().filter(|k| k.as_str() != "rule") {
        problems.push(RuleProblem::UnknownTopLevelKey { key: key.clone() });
    }
    let entries: &[toml::Value] = match table.get("rule") {
        None => &[],
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            problems.push(RuleProblem::RuleNotArray);
            &[]
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let rule = i + 1;
        let Some(entry) = entry.as_table() else {
            problems.push(RuleProblem::RuleNotTable { rule });
            continue;
        };
        let Some(parsed) = parse_rule(rule, entry, origin, &mut problems) else {
            continue;
        };
        if let Some(&first) = ids.get(parsed.id) {
            problems.push(RuleProblem::DuplicateId {
                rule,
                id: parsed.id.to_owned(),
                first,
            });
            continue;
        }
        ids.insert(parsed.id, rule);
        rules.push(parsed);
    }
    if !problems.is_empty() {
        return Err(ClassifierError::Rules {
            origin: origin.to_owned(),
            problems,
        });
    }
    Ok(RuleSet {
        origin: origin.to_owned(),
        rules,
    })
}

/// Parses one `[[rule]]`, pushing its problems; returns the rule when it has none.
pub(super) fn parse_rule(
    rule: usize,
    entry: &toml::Table,
    origin: &str,
    problems: &mut Vec<RuleProblem>,
) -> Option<Rule> {
    let before = problems.len();
    for key in entry.keys().filter(|k| !RULE_KEYS.contains(&k.as_str())) {
        problems.push(RuleProblem::UnknownKey {
            rule,
            key: key.clone(),
        });
    }
    let invalid = |key: &'static str, value: &toml::Value, expected: &'static str| {
        RuleProblem::InvalidValue {
            rule,
            key,
            value: value.to_string(),
            expected,
        }
    };

    let id = match entry.get("id") {
        None => Some(intern(&format!("{origin}#{rule}"))),
        Some(v) => {
            let parsed = v.as_str().filter(|id| valid_id(id)).map(intern);
            if parsed.is_none() {
                problems.push(invalid(
                    "id",
                    v,
                    "up to 64 letters, digits, `.`, `_` or `-`, such as \"gmail.rate\"",
                ));
            }
            parsed
        }
    };
    let code = entry.get("code").and_then(|v| {
        let parsed = match v {
            toml::Value::String(s) => parse_code_match(s),
            toml::Value::Integer(n) => u16::try_from(*n)
                .ok()
                .and_then(|n| parse_code_match(&n.to_string())),
            _ => None,
        };
        if parsed.is_none() {
            problems.push(invalid(
                "code",
                v,
                "a reply code such as \"550\", \"55x\" or \"5xx\"",
            ));
        }
        parsed
    });
    let enhanced = entry.get("enhanced").and_then(|v| {
        let parsed = v.as_str().and_then(parse_enhanced_match);
        if parsed.is_none() {
            problems.push(invalid(
                "enhanced",
                v,
                "an enhanced code such as \"5.1.1\" or \"5.7.*\"",
            ));
        }
        parsed
    });
    let pattern = entry
        .get("pattern")
        .and_then(|v| parse_pattern(rule, v, problems));
    let pattern_sources = match entry.get("pattern") {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let connection = entry.get("connection").and_then(|v| {
        let parsed = v.as_str().and_then(ConnFailure::from_name);
        if parsed.is_none() {
            problems.push(invalid(
                "connection",
                v,
                "one of refused, timeout, reset, dns_nxdomain, dns_null_mx, dns_servfail, \
                 dns_timeout, dns_no_address, tls, protocol",
            ));
        }
        parsed
    });
    let category = match entry.get("category") {
        None => {
            problems.push(RuleProblem::MissingKey {
                rule,
                key: "category",
            });
            None
        }
        Some(v) => {
            let parsed = v.as_str().and_then(Category::from_name);
            if parsed.is_none() {
                problems.push(invalid(
                    "category",
                    v,
                    "a category such as \"user_unknown\"",
                ));
            }
            parsed
        }
    };
    let action = match entry.get("action") {
        None => {
            problems.push(RuleProblem::MissingKey {
                rule,
                key: "action",
            });
            None
        }
        Some(v) => {
            let parsed = match v.as_str() {
                Some("by_class") => Some(RuleAction::ByClass),
                other => other.and_then(Action::from_name).map(RuleAction::Fixed),
            };
            if parsed.is_none() {
                problems.push(invalid(
                    "action",
                    v,
                    "\"retry\", \"bounce\" or \"by_class\"",
                ));
            }
            parsed
        }
    };

    let has = |key: &str| entry.contains_key(key);
    if !["code", "enhanced", "pattern", "connection"]
        .iter()
        .any(|k| has(k))
    {
        problems.push(RuleProblem::NoCondition { rule });
    }
    if has("connection") {
        for other in ["code", "enhanced", "pattern"] {
            if has(other) {
                problems.push(RuleProblem::ConnectionWithReplyKey { rule, other });
            }
        }
    }

    if problems.len() != before {
        return None;
    }
    Some(Rule {
        number: rule,
        id: id?,
        pattern_sources: pattern_sources.into_boxed_slice(),
        code,
        enhanced,
        pattern,
        connection,
        category: category?,
        action: action?,
    })
}

/// A rule id: short, and made of characters that need no quoting in logs and JSON.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The process-wide copy of a rule id. Each distinct id is allocated once and kept, so a
/// verdict can carry `&'static str` and a reload of the same rules allocates nothing new;
/// what is kept is bounded by the distinct ids ever loaded.
fn intern(id: &str) -> &'static str {
    static IDS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut ids = IDS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = ids.get(id) {
        return known;
    }
    let kept: &'static str = Box::leak(id.into());
    ids.insert(kept);
    kept
}

/// `pattern` is a regex or an array of regexes (any of them matches), compiled as one
/// case-insensitive alternation. When that fails, the elements are compiled alone so that
/// the error can name the bad one.
pub(super) fn parse_pattern(
    rule: usize,
    value: &toml::Value,
    problems: &mut Vec<RuleProblem>,
) -> Option<Regex> {
    let sources: Vec<(Option<usize>, &str)> = match value {
        toml::Value::String(s) => vec![(None, s.as_str())],
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_str()) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_str().map(|s| (Some(i + 1), s)))
            .collect(),
        _ => {
            problems.push(RuleProblem::InvalidValue {
                rule,
                key: "pattern",
                value: value.to_string(),
                expected: "a regex string or a non-empty array of regex strings",
            });
            return None;
        }
    };
    let compile = |source: &str| RegexBuilder::new(source).case_insensitive(true).build();
    let joined = match sources.as_slice() {
        [(None, single)] => Cow::Borrowed(*single),
        _ => Cow::Owned(
            sources
                .iter()
                .map(|(_, s)| format!("(?:{s})"))
                .collect::<Vec<_>>()
                .join("|"),
        ),
    };
    let whole_error = match compile(&joined) {
        Ok(regex) => return Some(regex),
        Err(e) => e,
    };
    let before = problems.len();
    for (index, source) in &sources {
        if let Err(source) = compile(source) {
            problems.push(RuleProblem::BadPattern {
                rule,
                index: *index,
                source,
            });
        }
    }
    // Every element compiles alone: the alternation as a whole is over the size limit.
    if problems.len() == before {
        problems.push(RuleProblem::BadPattern {
            rule,
            index: None,
            source: whole_error,
        });
    }
    None
}

/// `"550"`, `"55x"`, `"5xx"`: three characters, each a digit or `x`; the first 2-5.
pub(super) fn parse_code_match(s: &str) -> Option<CodeMatch> {
    let bytes = s.as_bytes();
    if bytes.len() != 3 || !(b'2'..=b'5').contains(&bytes[0]) {
        return None;
    }
    let mut digits = [None; 3];
    for (slot, &b) in digits.iter_mut().zip(bytes) {
        *slot = match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'x' | b'X' => None,
            _ => return None,
        };
    }
    Some(CodeMatch(digits))
}

/// `"5.1.1"`, `"5.7.*"`, `"*.7.28"`: three dot-separated parts, each a number or `*`.
pub(super) fn parse_enhanced_match(s: &str) -> Option<EnhancedMatch> {
    let mut parts = s.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let class = match class {
        "*" => None,
        "2" => Some(2),
        "4" => Some(4),
        "5" => Some(5),
        _ => return None,
    };
    let part = |p: &str| -> Option<Option<u16>> {
        if p == "*" {
            Some(None)
        } else {
            number(p).map(Some)
        }
    };
    Some(EnhancedMatch {
        class,
        subject: part(subject)?,
        detail: part(detail)?,
    })
}

/// Displays rule problems separated by `; `.
pub(super) struct ProblemList<'a>(pub(super) &'a [RuleProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Displays ` element N` for an array pattern, nothing for a single one.
pub(super) struct PatternIndex(pub(super) Option<usize>);

impl fmt::Display for PatternIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, " element {i}"),
            None => Ok(()),
        }
    }
}
