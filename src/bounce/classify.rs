//! Bounce classifier: turns a failed delivery attempt (an SMTP reply or a connection-level
//! failure) into a [`Category`] and an [`Action`] (retry or bounce).
//!
//! The decision comes from a table of rules: the built-in `rules.toml` (embedded at build
//! time) plus optional operator rule files, which are tried first. The first matching rule
//! wins; when none matches, the classifier falls back on the RFC 3463 enhanced status code,
//! then on the reply class (RFC 5321 §4.2.1: 4yz transient, 5yz permanent).
//!
//! This module never does I/O, never reads the clock and never panics on peer input: reply
//! text is matched with the `regex` crate, whose matching time is linear in the text, and
//! only the first [`MAX_MATCHED_TEXT`] bytes of a reply are looked at.
//!
//! Invariants:
//! - Regexes are compiled once, when a rule file is loaded, one per rule. Classifying runs
//!   only the patterns of rules whose code conditions already hold, in order, and stops at
//!   the first match. (One `RegexSet` per file was measured and rejected: its lazy DFA
//!   thrashes on the built-in rules at the default cache size, ~100x slower.)
//! - Built-in rules never bounce a 4xx reply (checked by a unit test); operator rules may.
//! - Rule numbers in errors are 1-based: rule 1 is the first `[[rule]]` table of the file.

use std::borrow::Cow;
use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::smtp::EnhancedCode;

/// The built-in rules; `Classifier::builtin` parses them.
const BUILTIN_RULES: &str = include_str!("rules.toml");

/// How many bytes of reply text the rules look at. RFC 5321 §4.5.3.1.5 limits a reply line
/// to 512 octets; a few lines of a multi-line reply fit, and a peer that sends more cannot
/// make classification slower.
pub const MAX_MATCHED_TEXT: usize = 4096;

/// What kind of failure a delivery attempt met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The recipient mailbox does not exist.
    UserUnknown,
    /// The recipient mailbox exists but is disabled, suspended or closed.
    MailboxDisabled,
    /// The recipient mailbox is over its quota.
    MailboxFull,
    /// The sending IP or domain is on a blocklist or has a poor reputation.
    Blocklisted,
    /// The receiver greylists the sender and asks it to come back later.
    Greylisted,
    /// The receiver throttles the sender (connections, messages or recipients per time).
    RateLimited,
    /// The message was rejected as spam or by a content filter.
    Spam,
    /// The message was rejected as carrying malware.
    Virus,
    /// The message or sender breaks a receiver policy (SPF, DKIM, DMARC, access rules).
    Policy,
    /// The message is larger than the receiver accepts.
    MessageTooBig,
    /// The receiver does not relay for the recipient's domain.
    RelayDenied,
    /// The recipient domain or its mail hosts do not exist in DNS, or it has a null MX.
    HostUnknown,
    /// TLS was required or failed.
    Tls,
    /// The SMTP conversation went wrong (syntax, sequence, unexpected replies).
    Protocol,
    /// A transient condition at the receiver or on the network.
    Temporary,
    /// Nothing more specific is known.
    Other,
}

/// What the queue does with the recipient after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep the recipient queued and try again later.
    Retry,
    /// Give up now and send a failure DSN.
    Bounce,
}

/// The verdict for one failure. Serializes as `{"category":"user_unknown","action":"bounce"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Classification {
    /// What kind of failure it was.
    pub category: Category,
    /// What to do about it.
    pub action: Action,
}

/// A failure that happened before the receiver could answer with a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnFailure {
    /// The TCP connection was refused or the host was unreachable.
    Refused,
    /// Connecting or waiting for a reply timed out.
    Timeout,
    /// The connection was reset or closed by the peer mid-conversation.
    Reset,
    /// The recipient domain does not exist (NXDOMAIN).
    #[serde(rename = "dns_nxdomain")]
    DnsNxDomain,
    /// The recipient domain publishes a null MX (RFC 7505).
    DnsNullMx,
    /// The DNS server failed (SERVFAIL or a similar transient error).
    #[serde(rename = "dns_servfail")]
    DnsServFail,
    /// The DNS lookup timed out.
    DnsTimeout,
    /// The MX hosts have no A or AAAA records.
    DnsNoAddress,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The peer spoke something that was not SMTP, or broke the protocol.
    Protocol,
}

/// One failed delivery attempt, as the delivery layer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The receiver answered with a 4xx or 5xx reply.
    Reply {
        /// The three-digit reply code (RFC 5321 §4.2).
        code: u16,
        /// The RFC 3463 enhanced status code as (class, subject, detail), when present.
        enhanced: Option<(u8, u16, u16)>,
        /// The reply text after the codes; for a multi-line reply, the lines' texts joined
        /// with spaces.
        text: &'a str,
    },
    /// No reply: the connection or the DNS lookup failed.
    Connection(ConnFailure),
}

/// A loaded rule table. Build it once and reuse it (loading compiles regexes; cloning is
/// cheap, regexes are shared); `classify` takes `&self` and does not allocate for a
/// one-line reply.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// Rule files in the order they are tried: operator files first, built-in rules last.
    tiers: Vec<RuleSet>,
}

impl Classifier {
    /// The built-in rules (`src/bounce/rules.toml`, embedded at build time).
    pub fn builtin() -> Classifier {
        // Invariant: the embedded file is fixed at build time and the
        // `builtin_rules_load` test loads it, so this cannot fail in a tested build.
        Classifier::from_toml(BUILTIN_RULES, "builtin rules.toml")
            .expect("built-in bounce rules are valid (checked by the builtin_rules_load test)")
    }

    /// Loads an operator rule file. `origin` names the file in errors (usually its path).
    /// Every problem in the file is reported at once.
    pub fn from_toml(text: &str, origin: &str) -> Result<Classifier, ClassifierError> {
        let set = parse_rule_file(text, origin)?;
        Ok(Classifier { tiers: vec![set] })
    }

    /// Puts the rules of `extra` in front of this classifier's rules, so that they are
    /// tried first and override it.
    pub fn with_operator_rules(self, extra: Classifier) -> Classifier {
        let mut tiers = extra.tiers;
        tiers.extend(self.tiers);
        Classifier { tiers }
    }

    /// Classifies one failure: the first matching rule wins, then the fallbacks apply.
    pub fn classify(&self, failure: &Failure<'_>) -> Classification {
        match *failure {
            Failure::Connection(conn) => self
                .tiers
                .iter()
                .find_map(|tier| tier.match_connection(conn))
                .unwrap_or_else(|| connection_fallback(conn)),
            Failure::Reply {
                code,
                enhanced,
                text,
            } => {
                // RFC 5321 §4.2.1: only 4yz and 5yz replies report failures. Anything else
                // where a failure was reported means the conversation went out of step.
                if !(400..600).contains(&code) {
                    return Classification::new(Category::Protocol, Action::Retry);
                }
                let text = clip(text);
                self.tiers
                    .iter()
                    .find_map(|tier| tier.match_reply(code, enhanced, text))
                    .unwrap_or_else(|| reply_fallback(code, enhanced))
            }
        }
    }

    /// Classifies one raw reply line such as `550 5.1.1 <bob@x>: User unknown` or
    /// `550-5.1.1 ...`, parsing the reply code and enhanced code itself. Several lines of
    /// one multi-line reply separated by `\n` are joined before matching.
    ///
    /// A line without a reply code is read as a description of a connection-level failure
    /// ("connection refused", "NXDOMAIN", ...): a recognised description is classified as
    /// that [`ConnFailure`]; otherwise the text goes through the rules that have only a
    /// `pattern`, and failing those it is `Temporary`/`Retry` (with no verdict from the
    /// receiver there is nothing permanent to act on; RFC 5321 §4.5.4.1 says retry).
    pub fn classify_line(&self, line: &str) -> Classification {
        let parsed = parse_reply(line);
        if let Some(code) = parsed.code {
            return self.classify(&Failure::Reply {
                code,
                enhanced: parsed.enhanced,
                text: &parsed.text,
            });
        }
        let text = clip(&parsed.text);
        if let Some(conn) = recognize_connection_failure(text) {
            return self.classify(&Failure::Connection(conn));
        }
        self.tiers
            .iter()
            .find_map(|tier| tier.match_text_only(text))
            .unwrap_or(Classification::new(Category::Temporary, Action::Retry))
    }
}

impl Classification {
    /// Pairs a category with an action.
    pub const fn new(category: Category, action: Action) -> Classification {
        Classification { category, action }
    }
}

/// A rule file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The file is not valid TOML.
    #[error("{origin}: invalid toml: {source}")]
    Syntax {
        /// Where the rules came from.
        origin: String,
        /// The TOML parser's report (boxed: it is large and errors are rare).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The file is TOML but some rules are wrong; every problem found is listed.
    #[error("{origin}: {}", ProblemList(problems))]
    Rules {
        /// Where the rules came from.
        origin: String,
        /// The problems, in file order.
        problems: Vec<RuleProblem>,
    },
}

/// One problem in a rule file. `rule` is 1-based.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RuleProblem {
    /// A top-level key other than `rule`.
    #[error("unknown top-level key `{key}` (expected [[rule]] tables)")]
    UnknownTopLevelKey {
        /// The key as written.
        key: String,
    },
    /// `rule` is not an array of tables.
    #[error("`rule` must be an array of tables ([[rule]])")]
    RuleNotArray,
    /// An element of the `rule` array is not a table.
    #[error("rule {rule}: not a table")]
    RuleNotTable {
        /// Which rule (1-based).
        rule: usize,
    },
    /// A key that rules do not have.
    #[error("rule {rule}: unknown key `{key}`")]
    UnknownKey {
        /// Which rule (1-based).
        rule: usize,
        /// The key as written.
        key: String,
    },
    /// `category` or `action` is missing.
    #[error("rule {rule}: missing key `{key}`")]
    MissingKey {
        /// Which rule (1-based).
        rule: usize,
        /// The missing key.
        key: &'static str,
    },
    /// A key has a value of the wrong type or form.
    #[error("rule {rule}: `{key}` = {value} is invalid, expected {expected}")]
    InvalidValue {
        /// Which rule (1-based).
        rule: usize,
        /// The key whose value is wrong.
        key: &'static str,
        /// The value as TOML.
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
    /// A pattern is not a valid regex.
    #[error("rule {rule}: `pattern`{} is not a valid regex: {source}", PatternIndex(*index))]
    BadPattern {
        /// Which rule (1-based).
        rule: usize,
        /// For an array of patterns, which element (1-based).
        index: Option<usize>,
        /// The regex crate's report.
        source: regex::Error,
    },
    /// A rule with no condition would match every failure.
    #[error("rule {rule}: no condition (set `code`, `enhanced`, `pattern` or `connection`)")]
    NoCondition {
        /// Which rule (1-based).
        rule: usize,
    },
    /// `connection` with a reply condition: connection failures have no reply to match.
    #[error("rule {rule}: `connection` cannot be combined with `{other}`")]
    ConnectionWithReplyKey {
        /// Which rule (1-based).
        rule: usize,
        /// The reply key that was also set.
        other: &'static str,
    },
}

// ---------------------------------------------------------------------------------------
// Rule tables
// ---------------------------------------------------------------------------------------

/// The rules of one file, in file order.
#[derive(Clone, Debug)]
struct RuleSet {
    rules: Vec<Rule>,
}

/// One `[[rule]]`; every condition that is set must hold.
#[derive(Clone, Debug)]
struct Rule {
    code: Option<CodeMatch>,
    enhanced: Option<EnhancedMatch>,
    /// Case-insensitive; an array of patterns is compiled as one alternation.
    pattern: Option<Regex>,
    /// Set only when `code`, `enhanced` and `pattern` are not (checked at load).
    connection: Option<ConnFailure>,
    outcome: Classification,
}

/// A reply code with wildcards: `"5xx"` is `[Some(5), None, None]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CodeMatch([Option<u8>; 3]);

/// An enhanced code with wildcards: `"5.7.*"` has `detail: None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EnhancedMatch {
    class: Option<u8>,
    subject: Option<u16>,
    detail: Option<u16>,
}

impl RuleSet {
    fn match_connection(&self, conn: ConnFailure) -> Option<Classification> {
        self.rules
            .iter()
            .find(|rule| rule.connection == Some(conn))
            .map(|rule| rule.outcome)
    }

    fn match_reply(
        &self,
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        text: &str,
    ) -> Option<Classification> {
        for rule in &self.rules {
            if rule.connection.is_some() {
                continue;
            }
            if rule.code.is_some_and(|m| !m.matches(code)) {
                continue;
            }
            if rule
                .enhanced
                .is_some_and(|m| !enhanced.is_some_and(|e| m.matches(e)))
            {
                continue;
            }
            if rule.pattern.as_ref().is_some_and(|p| !p.is_match(text)) {
                continue;
            }
            return Some(rule.outcome);
        }
        None
    }

    /// Text with no reply code can only meet rules that ask for nothing but a pattern.
    fn match_text_only(&self, text: &str) -> Option<Classification> {
        self.rules
            .iter()
            .filter(|rule| rule.code.is_none() && rule.enhanced.is_none())
            .find(|rule| rule.pattern.as_ref().is_some_and(|p| p.is_match(text)))
            .map(|rule| rule.outcome)
    }
}

impl CodeMatch {
    fn matches(self, code: u16) -> bool {
        let digits = [code / 100, code / 10 % 10, code % 10];
        self.0
            .iter()
            .zip(digits)
            .all(|(want, got)| want.is_none_or(|w| u16::from(w) == got))
    }
}

impl EnhancedMatch {
    fn matches(self, (class, subject, detail): (u8, u16, u16)) -> bool {
        self.class.is_none_or(|c| c == class)
            && self.subject.is_none_or(|s| s == subject)
            && self.detail.is_none_or(|d| d == detail)
    }
}

// ---------------------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------------------

/// No rule matched a 4xx/5xx reply: RFC 3463 subject and detail give the category, the
/// reply class the action, except that the retry categories retry even on 5xx (the
/// product's promise; see rules.toml). The reply code wins over the enhanced code's class
/// when they disagree: RFC 5321 §4.2.1 clients act on the reply code.
fn reply_fallback(code: u16, enhanced: Option<(u8, u16, u16)>) -> Classification {
    let transient = code / 100 == 4;
    let category = enhanced
        .map(|(_, subject, detail)| enhanced_category(subject, detail))
        .unwrap_or(if transient {
            Category::Temporary
        } else {
            Category::Other
        });
    let action = if transient || category.retries_on_permanent() {
        Action::Retry
    } else {
        Action::Bounce
    };
    Classification::new(category, action)
}

/// RFC 3463 §3 (and the IANA registry for later codes) subject.detail to a category.
fn enhanced_category(subject: u16, detail: u16) -> Category {
    use Category::*;
    match (subject, detail) {
        // X.1 addressing. X.1.10 is RFC 7505's null MX.
        (1, 0 | 1 | 3 | 6) => UserUnknown,
        (1, 2 | 10) => HostUnknown,
        (1, 7 | 8) => Policy,
        (1, _) => Other,
        // X.2 mailbox.
        (2, 1) => MailboxDisabled,
        (2, 2) => MailboxFull,
        (2, 3) => MessageTooBig,
        (2, _) => Other,
        // X.3 mail system: the receiver's own state.
        (3, 4) => MessageTooBig,
        (3, 0 | 1 | 2 | 5) => Temporary,
        (3, _) => Other,
        // X.4 network and routing. X.4.4 is "unable to route"; X.4.6/X.4.7 are a loop and
        // an expired message at a relay, final verdicts.
        (4, 4) => HostUnknown,
        (4, 0..=3 | 5) => Temporary,
        (4, _) => Other,
        // X.5 protocol. X.5.3 is "too many recipients" (RFC 5321 §4.5.3.1.10: retry them).
        (5, 3) => RateLimited,
        (5, _) => Protocol,
        // X.7 security and policy.
        (7, 4 | 10 | 11) => Tls,
        (7, 13) => MailboxDisabled,
        (7, 25) => Blocklisted,
        (7, 28) => RateLimited,
        (7, _) => Policy,
        _ => Other,
    }
}

/// The same table as the connection rules at the top of rules.toml, used when an operator
/// classifier alone (without the built-in rules) meets a connection failure.
fn connection_fallback(conn: ConnFailure) -> Classification {
    let (category, action) = match conn {
        ConnFailure::DnsNxDomain | ConnFailure::DnsNullMx => {
            (Category::HostUnknown, Action::Bounce)
        }
        ConnFailure::DnsNoAddress => (Category::HostUnknown, Action::Retry),
        ConnFailure::Tls => (Category::Tls, Action::Retry),
        ConnFailure::Protocol => (Category::Protocol, Action::Retry),
        ConnFailure::Refused
        | ConnFailure::Timeout
        | ConnFailure::Reset
        | ConnFailure::DnsServFail
        | ConnFailure::DnsTimeout => (Category::Temporary, Action::Retry),
    };
    Classification::new(category, action)
}

impl Category {
    /// Categories that describe the sender's infrastructure or the receiver's state rather
    /// than the message or the recipient, so they can clear up: retried even on 5xx.
    fn retries_on_permanent(self) -> bool {
        matches!(
            self,
            Category::MailboxFull
                | Category::Blocklisted
                | Category::Greylisted
                | Category::RateLimited
                | Category::Temporary
                | Category::Tls
        )
    }

    /// Every category, in declaration order.
    pub const ALL: [Category; 16] = [
        Category::UserUnknown,
        Category::MailboxDisabled,
        Category::MailboxFull,
        Category::Blocklisted,
        Category::Greylisted,
        Category::RateLimited,
        Category::Spam,
        Category::Virus,
        Category::Policy,
        Category::MessageTooBig,
        Category::RelayDenied,
        Category::HostUnknown,
        Category::Tls,
        Category::Protocol,
        Category::Temporary,
        Category::Other,
    ];

    /// The category's name: in rules files, the event log, metrics and `bounce classify`
    /// output (the same as its serde name).
    pub fn name(self) -> &'static str {
        match self {
            Category::UserUnknown => "user_unknown",
            Category::MailboxDisabled => "mailbox_disabled",
            Category::MailboxFull => "mailbox_full",
            Category::Blocklisted => "blocklisted",
            Category::Greylisted => "greylisted",
            Category::RateLimited => "rate_limited",
            Category::Spam => "spam",
            Category::Virus => "virus",
            Category::Policy => "policy",
            Category::MessageTooBig => "message_too_big",
            Category::RelayDenied => "relay_denied",
            Category::HostUnknown => "host_unknown",
            Category::Tls => "tls",
            Category::Protocol => "protocol",
            Category::Temporary => "temporary",
            Category::Other => "other",
        }
    }

    /// The category with this name.
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl Action {
    fn from_name(name: &str) -> Option<Action> {
        match name {
            "retry" => Some(Action::Retry),
            "bounce" => Some(Action::Bounce),
            _ => None,
        }
    }
}

impl ConnFailure {
    fn from_name(name: &str) -> Option<ConnFailure> {
        use ConnFailure::*;
        Some(match name {
            "refused" => Refused,
            "timeout" => Timeout,
            "reset" => Reset,
            "dns_nxdomain" => DnsNxDomain,
            "dns_null_mx" => DnsNullMx,
            "dns_servfail" => DnsServFail,
            "dns_timeout" => DnsTimeout,
            "dns_no_address" => DnsNoAddress,
            "tls" => Tls,
            "protocol" => Protocol,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Raw lines
// ---------------------------------------------------------------------------------------

/// A reply line split into its parts.
struct ParsedReply<'a> {
    code: Option<u16>,
    enhanced: Option<(u8, u16, u16)>,
    /// The text after the codes; owned only when several lines were joined.
    text: Cow<'a, str>,
}

/// Splits `550-5.1.1 text` into code, enhanced code and text. Lines after the first (for a
/// multi-line reply) lose their own codes and are joined with spaces.
fn parse_reply(raw: &str) -> ParsedReply<'_> {
    let mut lines = raw.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let (code, rest) = split_code(first);
    let (enhanced, text) = match code {
        Some(_) => split_enhanced(rest),
        None => (None, rest),
    };
    let mut joined: Cow<'_, str> = Cow::Borrowed(text);
    for line in lines {
        let text = match split_code(line) {
            (Some(_), rest) => split_enhanced(rest).1,
            (None, rest) => rest,
        };
        if text.is_empty() {
            continue;
        }
        let owned = joined.to_mut();
        if !owned.is_empty() {
            owned.push(' ');
        }
        owned.push_str(text);
        if owned.len() > MAX_MATCHED_TEXT {
            break;
        }
    }
    ParsedReply {
        code,
        enhanced,
        text: joined,
    }
}

/// RFC 5321 §4.2: a reply line is three digits (the first 2-5), then a space, a hyphen
/// (more lines follow) or the end of the line.
fn split_code(line: &str) -> (Option<u16>, &str) {
    let bytes = line.as_bytes();
    let is_code = bytes.len() >= 3
        && (b'2'..=b'5').contains(&bytes[0])
        && bytes[1].is_ascii_digit()
        && bytes[2].is_ascii_digit()
        && matches!(bytes.get(3), None | Some(b' ' | b'-' | b'\t'));
    if !is_code {
        return (None, line);
    }
    let code = bytes[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    (Some(code), line.get(4..).unwrap_or("").trim_start())
}

/// RFC 3463 §2 / RFC 2034 §4: an enhanced code `class.subject.detail` (class 2, 4 or 5,
/// subject and detail of one to three digits) may start the text. Cisco and qmail write it
/// with a leading `#`. Anything that does not end at a space or punctuation (such as
/// Yahoo's `4.16.55.1`) is not an enhanced code.
fn split_enhanced(text: &str) -> (Option<(u8, u16, u16)>, &str) {
    let candidate = text.strip_prefix('#').unwrap_or(text);
    let end = candidate
        .find(|c: char| c.is_whitespace() || matches!(c, ':' | ';' | ',' | ')'))
        .unwrap_or(candidate.len());
    let parsed = EnhancedCode::parse(&candidate[..end]).map(|e| (e.class, e.subject, e.detail));
    match parsed {
        Some(code) => {
            let rest = &candidate[end..];
            let rest = rest.strip_prefix([':', ';', ',', ')']).unwrap_or(rest);
            (Some(code), rest.trim_start())
        }
        None => (None, text),
    }
}

/// One to three ASCII digits.
fn number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads a code-less line as a connection-level failure description, in the words of
/// resolvers, kernels and MTA logs. More specific descriptions are tested first ("DNS
/// lookup timed out" is a DNS timeout, not a connection timeout).
fn recognize_connection_failure(text: &str) -> Option<ConnFailure> {
    let text = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let dns = has(&["dns", "name service", "resolv", "lookup", "mx record"]);
    if has(&["null mx", "nullmx"]) {
        return Some(ConnFailure::DnsNullMx);
    }
    if has(&[
        "servfail",
        "server failure",
        "try again",
        "temporary failure in name",
    ]) && dns
        || has(&[
            "servfail",
            "temporary failure in name resolution",
            "eai_again",
        ])
    {
        return Some(ConnFailure::DnsServFail);
    }
    if dns && has(&["timeout", "timed out"]) {
        return Some(ConnFailure::DnsTimeout);
    }
    if has(&[
        "nxdomain",
        "non-existent domain",
        "nonexistent domain",
        "no such domain",
        "domain not found",
        "host not found",
        "domain does not exist",
    ]) {
        return Some(ConnFailure::DnsNxDomain);
    }
    if has(&[
        "no address",
        "no a record",
        "no aaaa",
        "nodata",
        "no a/aaaa",
    ]) {
        return Some(ConnFailure::DnsNoAddress);
    }
    if has(&["tls", "ssl", "handshake", "certificate", "starttls"]) {
        return Some(ConnFailure::Tls);
    }
    // An ICMP "unreachable" is refused before the connection opens, like a RST to SYN.
    if has(&["refused", "econnrefused", "unreachable", "no route to host"]) {
        return Some(ConnFailure::Refused);
    }
    if has(&["timed out", "timeout", "etimedout"]) {
        return Some(ConnFailure::Timeout);
    }
    if has(&[
        "reset",
        "broken pipe",
        "epipe",
        "connection closed",
        "lost connection",
        "unexpected eof",
        "connection aborted",
    ]) {
        return Some(ConnFailure::Reset);
    }
    if has(&[
        "protocol",
        "unexpected reply",
        "malformed",
        "garbled",
        "invalid response",
    ]) {
        return Some(ConnFailure::Protocol);
    }
    None
}

/// The first `MAX_MATCHED_TEXT` bytes of `text`, cut at a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_MATCHED_TEXT {
        return text;
    }
    let mut end = MAX_MATCHED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

// ---------------------------------------------------------------------------------------
// Rule file parsing
// ---------------------------------------------------------------------------------------

const RULE_KEYS: [&str; 6] = [
    "code",
    "enhanced",
    "pattern",
    "connection",
    "category",
    "action",
];

fn parse_rule_file(text: &str, origin: &str) -> Result<RuleSet, ClassifierError> {
    let table: toml::Table = toml::from_str(text).map_err(|source| ClassifierError::Syntax {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    let mut problems = Vec::new();
    let mut rules = Vec::new();

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
        rules.extend(parse_rule(rule, entry, &mut problems));
    }
    if !problems.is_empty() {
        return Err(ClassifierError::Rules {
            origin: origin.to_owned(),
            problems,
        });
    }
    Ok(RuleSet { rules })
}

/// Parses one `[[rule]]`, pushing its problems; returns the rule when it has none.
fn parse_rule(rule: usize, entry: &toml::Table, problems: &mut Vec<RuleProblem>) -> Option<Rule> {
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
            let parsed = v.as_str().and_then(Action::from_name);
            if parsed.is_none() {
                problems.push(invalid("action", v, "\"retry\" or \"bounce\""));
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
        code,
        enhanced,
        pattern,
        connection,
        outcome: Classification::new(category?, action?),
    })
}

/// `pattern` is a regex or an array of regexes (any of them matches), compiled as one
/// case-insensitive alternation. When that fails, the elements are compiled alone so that
/// the error can name the bad one.
fn parse_pattern(
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
fn parse_code_match(s: &str) -> Option<CodeMatch> {
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
fn parse_enhanced_match(s: &str) -> Option<EnhancedMatch> {
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
struct ProblemList<'a>(&'a [RuleProblem]);

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
struct PatternIndex(Option<usize>);

impl fmt::Display for PatternIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, " element {i}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = include_str!("corpus.txt");

    fn c(category: Category, action: Action) -> Classification {
        Classification::new(category, action)
    }

    fn load(text: &str) -> Classifier {
        match Classifier::from_toml(text, "test.toml") {
            Ok(classifier) => classifier,
            Err(e) => panic!("rules should load: {e}"),
        }
    }

    fn problems(text: &str) -> Vec<RuleProblem> {
        match Classifier::from_toml(text, "test.toml") {
            Err(ClassifierError::Rules { origin, problems }) => {
                assert_eq!(origin, "test.toml");
                problems
            }
            Err(other) => panic!("expected rule problems, got {other}"),
            Ok(_) => panic!("expected rule problems, the file loaded"),
        }
    }

    // --- built-in rules and corpus -------------------------------------------------------

    #[test]
    fn builtin_rules_load() {
        let classifier = Classifier::builtin();
        assert_eq!(classifier.tiers.len(), 1);
        assert!(classifier.tiers[0].rules.len() > 30);
    }

    /// Every corpus line through `classify_line`; all mismatches are printed before failing.
    #[test]
    fn corpus_classifies_as_expected() {
        let classifier = Classifier::builtin();
        let mut checked = 0;
        let mut mismatches = Vec::new();
        for (number, line) in CORPUS.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((expected, reply)) = line.split_once(" | ") else {
                panic!("corpus line {}: no ` | ` separator: {line}", number + 1);
            };
            let mut words = expected.split_whitespace();
            let (Some(category), Some(action), None) = (
                words.next().and_then(Category::from_name),
                words.next().and_then(Action::from_name),
                words.next(),
            ) else {
                panic!("corpus line {}: bad expectation `{expected}`", number + 1);
            };
            let got = classifier.classify_line(reply);
            if got != c(category, action) {
                mismatches.push(format!(
                    "line {}: expected {category:?}/{action:?}, got {:?}/{:?}: {reply}",
                    number + 1,
                    got.category,
                    got.action
                ));
            }
            checked += 1;
        }
        for mismatch in &mismatches {
            eprintln!("{mismatch}");
        }
        assert!(checked >= 150, "corpus has only {checked} lines");
        assert!(
            mismatches.is_empty(),
            "{} of {checked} corpus lines misclassified (listed above)",
            mismatches.len()
        );
    }

    /// RFC 5321 §4.2.1: built-in rules never turn a transient reply into a bounce.
    #[test]
    fn builtin_bounce_rules_require_a_5xx_code() {
        let classifier = Classifier::builtin();
        for (i, rule) in classifier.tiers[0].rules.iter().enumerate() {
            if rule.outcome.action != Action::Bounce || rule.connection.is_some() {
                continue;
            }
            let class = rule.code.and_then(|code| code.0[0]);
            assert_eq!(
                class,
                Some(5),
                "built-in rule {} bounces without code = 5xx",
                i + 1
            );
        }
    }

    #[test]
    fn corpus_4xx_lines_never_bounce() {
        let classifier = Classifier::builtin();
        for line in CORPUS
            .lines()
            .filter_map(|l| l.split_once(" | "))
            .map(|(_, r)| r)
        {
            if line.starts_with('4') {
                assert_eq!(
                    classifier.classify_line(line).action,
                    Action::Retry,
                    "{line}"
                );
            }
        }
    }

    // --- connection failures -------------------------------------------------------------

    const ALL_CONN: [ConnFailure; 10] = [
        ConnFailure::Refused,
        ConnFailure::Timeout,
        ConnFailure::Reset,
        ConnFailure::DnsNxDomain,
        ConnFailure::DnsNullMx,
        ConnFailure::DnsServFail,
        ConnFailure::DnsTimeout,
        ConnFailure::DnsNoAddress,
        ConnFailure::Tls,
        ConnFailure::Protocol,
    ];

    #[test]
    fn connection_failures() {
        use Action::*;
        use Category::*;
        let classifier = Classifier::builtin();
        let table = [
            (ConnFailure::Refused, c(Temporary, Retry)),
            (ConnFailure::Timeout, c(Temporary, Retry)),
            (ConnFailure::Reset, c(Temporary, Retry)),
            (ConnFailure::DnsNxDomain, c(HostUnknown, Bounce)),
            (ConnFailure::DnsNullMx, c(HostUnknown, Bounce)),
            (ConnFailure::DnsServFail, c(Temporary, Retry)),
            (ConnFailure::DnsTimeout, c(Temporary, Retry)),
            (ConnFailure::DnsNoAddress, c(HostUnknown, Retry)),
            (ConnFailure::Tls, c(Tls, Retry)),
            (ConnFailure::Protocol, c(Protocol, Retry)),
        ];
        for (conn, expected) in table {
            assert_eq!(
                classifier.classify(&Failure::Connection(conn)),
                expected,
                "{conn:?}"
            );
        }
    }

    /// An operator classifier used alone falls back on the same table as the built-in rules.
    #[test]
    fn connection_fallback_agrees_with_builtin_rules() {
        let builtin = Classifier::builtin();
        let alone = load("");
        for conn in ALL_CONN {
            let failure = Failure::Connection(conn);
            assert_eq!(
                alone.classify(&failure),
                builtin.classify(&failure),
                "{conn:?}"
            );
            assert!(
                builtin.tiers[0].match_connection(conn).is_some(),
                "{conn:?} has no rule"
            );
        }
    }

    #[test]
    fn codeless_descriptions_are_recognised() {
        let table = [
            ("Connection refused", Some(ConnFailure::Refused)),
            ("connect: ECONNREFUSED", Some(ConnFailure::Refused)),
            ("read: connection timed out", Some(ConnFailure::Timeout)),
            ("Broken pipe", Some(ConnFailure::Reset)),
            ("NXDOMAIN for x.example", Some(ConnFailure::DnsNxDomain)),
            ("null MX", Some(ConnFailure::DnsNullMx)),
            ("resolver returned SERVFAIL", Some(ConnFailure::DnsServFail)),
            (
                "DNS timeout for x.example MX",
                Some(ConnFailure::DnsTimeout),
            ),
            (
                "mx.x.example: no A/AAAA records",
                Some(ConnFailure::DnsNoAddress),
            ),
            ("certificate has expired", Some(ConnFailure::Tls)),
            ("malformed reply", Some(ConnFailure::Protocol)),
            ("the cat sat on the mat", None),
        ];
        for (text, expected) in table {
            assert_eq!(recognize_connection_failure(text), expected, "{text}");
        }
    }

    // --- operator rules ------------------------------------------------------------------

    #[test]
    fn operator_rules_override_builtin() {
        let operator = load(
            r#"
            [[rule]]
            code = "550"
            enhanced = "5.1.1"
            category = "mailbox_full"
            action = "retry"

            [[rule]]
            connection = "refused"
            category = "other"
            action = "bounce"

            [[rule]]
            pattern = "frobnicated"
            category = "policy"
            action = "bounce"
            "#,
        );
        let classifier = Classifier::builtin().with_operator_rules(operator);
        let full_retry = c(Category::MailboxFull, Action::Retry);
        assert_eq!(
            classifier.classify_line("550 5.1.1 <bob@x.example>: User unknown"),
            full_retry
        );
        // Not matched by the operator file: the built-in rules still apply.
        assert_eq!(
            classifier.classify_line("553 5.1.1 <bob@x.example>: User unknown"),
            c(Category::UserUnknown, Action::Bounce)
        );
        assert_eq!(
            classifier.classify(&Failure::Connection(ConnFailure::Refused)),
            c(Category::Other, Action::Bounce)
        );
        assert_eq!(
            classifier.classify(&Failure::Connection(ConnFailure::Timeout)),
            c(Category::Temporary, Action::Retry)
        );
        // A pattern-only operator rule also applies to code-less text and beats 4xx retries.
        assert_eq!(
            classifier.classify_line("frobnicated"),
            c(Category::Policy, Action::Bounce)
        );
        assert_eq!(
            classifier.classify_line("451 4.7.1 you were frobnicated, try again later"),
            c(Category::Policy, Action::Bounce)
        );
    }

    #[test]
    fn later_operator_files_come_first() {
        let first = load("[[rule]]\ncode = \"550\"\ncategory = \"spam\"\naction = \"bounce\"\n");
        let second = load("[[rule]]\ncode = \"550\"\ncategory = \"virus\"\naction = \"bounce\"\n");
        let classifier = Classifier::builtin()
            .with_operator_rules(first)
            .with_operator_rules(second);
        assert_eq!(classifier.classify_line("550 x").category, Category::Virus);
    }

    #[test]
    fn wildcards_in_code_and_enhanced() {
        let classifier = load(
            r#"
            [[rule]]
            code = "55x"
            enhanced = "*.7.*"
            category = "spam"
            action = "bounce"

            [[rule]]
            code = 421
            category = "rate_limited"
            action = "retry"
            "#,
        );
        assert_eq!(
            classifier.classify_line("554 5.7.9 no").category,
            Category::Spam
        );
        assert_eq!(
            classifier.classify_line("550 4.7.1 no").category,
            Category::Spam
        );
        // No enhanced code: an `enhanced` condition cannot hold.
        assert_eq!(classifier.classify_line("554 no").category, Category::Other);
        assert_eq!(
            classifier.classify_line("541 5.7.1 no").category,
            Category::Policy
        );
        assert_eq!(
            classifier.classify_line("421 bye").category,
            Category::RateLimited
        );
    }

    #[test]
    fn pattern_arrays_match_any_element_case_insensitively() {
        let classifier = load(
            r#"
            [[rule]]
            pattern = ['alpha', 'be(?:t)a']
            category = "spam"
            action = "retry"
            "#,
        );
        for line in ["450 ALPHA", "450 Beta", "550 x beta y"] {
            assert_eq!(
                classifier.classify_line(line).category,
                Category::Spam,
                "{line}"
            );
        }
        assert_eq!(
            classifier.classify_line("450 gamma").category,
            Category::Temporary
        );
    }

    // --- rule file parser ----------------------------------------------------------------

    #[test]
    fn empty_file_is_valid() {
        assert_eq!(load("").tiers[0].rules.len(), 0);
        assert_eq!(load("# only a comment\n").tiers[0].rules.len(), 0);
    }

    #[test]
    fn unknown_key_names_the_key_and_the_rule() {
        let text = r#"
            [[rule]]
            code = "550"
            category = "spam"
            action = "bounce"

            [[rule]]
            patern = "oops"
            category = "spam"
            action = "bounce"
        "#;
        let found = problems(text);
        assert_eq!(
            found,
            vec![
                RuleProblem::UnknownKey {
                    rule: 2,
                    key: "patern".into()
                },
                RuleProblem::NoCondition { rule: 2 },
            ]
        );
        let message = Classifier::from_toml(text, "/etc/ringmta/bounce.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with("/etc/ringmta/bounce.toml: "),
            "{message}"
        );
        assert!(
            message.contains("rule 2: unknown key `patern`"),
            "{message}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let found = problems(
            r#"
            version = 2

            [[rule]]
            code = "650"
            enhanced = "5.1"
            category = "nope"

            [[rule]]
            connection = "refused"
            code = "5xx"
            pattern = "x"
            category = "temporary"
            action = "maybe"

            [[rule]]
            connection = "smoke signals"
            category = "temporary"
            action = "retry"
            "#,
        );
        let expected = [
            RuleProblem::UnknownTopLevelKey {
                key: "version".into(),
            },
            RuleProblem::InvalidValue {
                rule: 1,
                key: "code",
                value: "\"650\"".into(),
                expected: "a reply code such as \"550\", \"55x\" or \"5xx\"",
            },
            RuleProblem::InvalidValue {
                rule: 1,
                key: "enhanced",
                value: "\"5.1\"".into(),
                expected: "an enhanced code such as \"5.1.1\" or \"5.7.*\"",
            },
            RuleProblem::InvalidValue {
                rule: 1,
                key: "category",
                value: "\"nope\"".into(),
                expected: "a category such as \"user_unknown\"",
            },
            RuleProblem::MissingKey {
                rule: 1,
                key: "action",
            },
            RuleProblem::InvalidValue {
                rule: 2,
                key: "action",
                value: "\"maybe\"".into(),
                expected: "\"retry\" or \"bounce\"",
            },
            RuleProblem::ConnectionWithReplyKey {
                rule: 2,
                other: "code",
            },
            RuleProblem::ConnectionWithReplyKey {
                rule: 2,
                other: "pattern",
            },
        ];
        assert_eq!(found[..expected.len()], expected[..]);
        assert_eq!(found.len(), expected.len() + 1);
        assert!(matches!(
            &found[expected.len()],
            RuleProblem::InvalidValue {
                rule: 3,
                key: "connection",
                ..
            }
        ));
    }

    #[test]
    fn bad_patterns_name_the_rule_and_element() {
        let found = problems(
            r#"
            [[rule]]
            pattern = "(unclosed"
            category = "spam"
            action = "bounce"

            [[rule]]
            pattern = ["fine", "[bad"]
            category = "spam"
            action = "bounce"

            [[rule]]
            pattern = []
            category = "spam"
            action = "bounce"

            [[rule]]
            pattern = ["fine", 3]
            category = "spam"
            action = "bounce"
            "#,
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(matches!(
            found[0],
            RuleProblem::BadPattern {
                rule: 1,
                index: None,
                ..
            }
        ));
        assert!(matches!(
            found[1],
            RuleProblem::BadPattern {
                rule: 2,
                index: Some(2),
                ..
            }
        ));
        assert!(matches!(
            found[2],
            RuleProblem::InvalidValue {
                rule: 3,
                key: "pattern",
                ..
            }
        ));
        assert!(matches!(
            found[3],
            RuleProblem::InvalidValue {
                rule: 4,
                key: "pattern",
                ..
            }
        ));
        assert!(
            found[1]
                .to_string()
                .starts_with("rule 2: `pattern` element 2 is not a valid regex")
        );
    }

    #[test]
    fn structural_problems() {
        assert_eq!(problems("rule = 3"), vec![RuleProblem::RuleNotArray]);
        assert_eq!(
            problems("rule = [1]"),
            vec![RuleProblem::RuleNotTable { rule: 1 }]
        );
        assert_eq!(
            problems("[[rule]]\naction = \"retry\"\ncode = \"4xx\""),
            vec![RuleProblem::MissingKey {
                rule: 1,
                key: "category"
            }]
        );
        for bad in ["55", "5xxx", "6xx", "x50", "abc"] {
            let text =
                format!("[[rule]]\ncode = \"{bad}\"\ncategory = \"spam\"\naction = \"retry\"");
            assert!(
                matches!(
                    problems(&text)[..],
                    [RuleProblem::InvalidValue { key: "code", .. }]
                ),
                "{bad}"
            );
        }
        for bad in ["5.1", "3.1.1", "5.1.1.1", "5.x.1", "5.1234.1", ""] {
            let text =
                format!("[[rule]]\nenhanced = \"{bad}\"\ncategory = \"spam\"\naction = \"retry\"");
            assert!(
                matches!(
                    problems(&text)[..],
                    [RuleProblem::InvalidValue {
                        key: "enhanced",
                        ..
                    }]
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn toml_syntax_error() {
        let origin = match Classifier::from_toml("[[rule]\ncode =", "broken.toml") {
            Err(ClassifierError::Syntax { origin, .. }) => origin,
            other => panic!("expected a syntax error, got {other:?}"),
        };
        assert_eq!(origin, "broken.toml");
    }

    // --- fallbacks -----------------------------------------------------------------------

    #[test]
    fn fallbacks_by_enhanced_code_then_class() {
        use Action::*;
        use Category::*;
        let none = load("");
        let table = [
            (450, None, c(Temporary, Retry)),
            (421, None, c(Temporary, Retry)),
            (550, None, c(Other, Bounce)),
            (554, None, c(Other, Bounce)),
            (550, Some((5, 1, 1)), c(UserUnknown, Bounce)),
            (450, Some((4, 1, 1)), c(UserUnknown, Retry)),
            (552, Some((5, 2, 2)), c(MailboxFull, Retry)),
            (552, Some((5, 3, 4)), c(MessageTooBig, Bounce)),
            (550, Some((5, 2, 1)), c(MailboxDisabled, Bounce)),
            (550, Some((5, 7, 1)), c(Policy, Bounce)),
            (451, Some((4, 7, 1)), c(Policy, Retry)),
            (550, Some((5, 7, 28)), c(RateLimited, Retry)),
            (530, Some((5, 7, 10)), c(Tls, Retry)),
            (554, Some((5, 3, 2)), c(Temporary, Retry)),
            (501, Some((5, 5, 4)), c(Protocol, Bounce)),
            // The reply code decides the action when the classes disagree.
            (550, Some((4, 1, 1)), c(UserUnknown, Bounce)),
        ];
        for (code, enhanced, expected) in table {
            let failure = Failure::Reply {
                code,
                enhanced,
                text: "",
            };
            assert_eq!(none.classify(&failure), expected, "{code} {enhanced:?}");
        }
    }

    #[test]
    fn non_failure_codes_are_protocol_errors() {
        let classifier = Classifier::builtin();
        for code in [0, 199, 250, 354, 600, 999] {
            let failure = Failure::Reply {
                code,
                enhanced: None,
                text: "user unknown",
            };
            assert_eq!(
                classifier.classify(&failure),
                c(Category::Protocol, Action::Retry),
                "{code}"
            );
        }
    }

    #[test]
    fn codeless_unrecognised_text_is_temporary() {
        assert_eq!(
            load("").classify_line(""),
            c(Category::Temporary, Action::Retry)
        );
        assert_eq!(
            Classifier::builtin().classify_line("  "),
            c(Category::Temporary, Action::Retry)
        );
    }

    // --- raw line parsing ----------------------------------------------------------------

    #[test]
    fn reply_lines_parse() {
        let table = [
            (
                "550 5.1.1 User unknown",
                Some(550),
                Some((5, 1, 1)),
                "User unknown",
            ),
            (
                "550-5.1.1 The email",
                Some(550),
                Some((5, 1, 1)),
                "The email",
            ),
            ("550 User unknown", Some(550), None, "User unknown"),
            ("550", Some(550), None, ""),
            ("550-", Some(550), None, ""),
            (
                "550 #5.1.0 Address rejected",
                Some(550),
                Some((5, 1, 0)),
                "Address rejected",
            ),
            ("550 5.7.1: go away", Some(550), Some((5, 7, 1)), "go away"),
            ("452 4.5.3", Some(452), Some((4, 5, 3)), ""),
            ("554 30 Sorry", Some(554), None, "30 Sorry"),
            ("421 4.16.55.1 x", Some(421), None, "4.16.55.1 x"),
            ("550 5.1.1234 x", Some(550), None, "5.1.1234 x"),
            ("5.1.1 User unknown", None, None, "5.1.1 User unknown"),
            ("5500 x", None, None, "5500 x"),
        ];
        // STYLE §10.2: CRLF, bare LF and trailing spaces parse alike.
        for suffix in ["", "\r\n", "\n", "  "] {
            for (line, code, enhanced, text) in table {
                let input = format!("{line}{suffix}");
                let parsed = parse_reply(&input);
                assert_eq!(parsed.code, code, "{input:?}");
                assert_eq!(parsed.enhanced, enhanced, "{input:?}");
                assert_eq!(parsed.text, text, "{input:?}");
            }
        }
    }

    #[test]
    fn multi_line_replies_are_joined() {
        let reply = "550-5.1.1 The email account that you tried to reach does not\r\n\
                     550-5.1.1 exist. Please try double-checking the recipient's\r\n\
                     550 5.1.1 address. Learn more at https://support.google.com/mail/\r\n";
        let parsed = parse_reply(reply);
        assert_eq!(parsed.code, Some(550));
        assert_eq!(parsed.enhanced, Some((5, 1, 1)));
        assert_eq!(
            parsed.text,
            "The email account that you tried to reach does not exist. Please try \
             double-checking the recipient's address. Learn more at \
             https://support.google.com/mail/"
        );
        let gmx = "554-gmx.net (mxgmx117) Nemesis ESMTP Service not available\n\
                   554-No SMTP service\n\
                   554-IP address is black listed.\n\
                   554 For explanation visit x";
        let classifier = Classifier::builtin();
        assert_eq!(
            classifier.classify_line(gmx),
            c(Category::Blocklisted, Action::Retry)
        );
        assert_eq!(
            classifier.classify_line(reply),
            c(Category::UserUnknown, Action::Bounce)
        );
    }

    #[test]
    fn long_text_is_clipped_at_a_char_boundary() {
        let long = format!("550 5.7.1 {}user unknown", "é".repeat(MAX_MATCHED_TEXT));
        let classifier = Classifier::builtin();
        // The phrase lies past the clip, so only the enhanced code decides.
        assert_eq!(
            classifier.classify_line(&long),
            c(Category::Policy, Action::Bounce)
        );
        let text = "ü".repeat(MAX_MATCHED_TEXT);
        assert!(clip(&text).len() <= MAX_MATCHED_TEXT);
        let many_lines = "550-x\n".repeat(10_000);
        assert!(parse_reply(&many_lines).text.len() <= MAX_MATCHED_TEXT + 10);
    }

    // --- names and serde -----------------------------------------------------------------

    #[test]
    fn names_match_serde() {
        let name = |v: serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_default();
        for category in Category::ALL {
            let serde_name = name(serde_json::json!(category));
            assert_eq!(category.name(), serde_name);
            assert_eq!(Category::from_name(&serde_name), Some(category));
        }
        for action in [Action::Retry, Action::Bounce] {
            assert_eq!(
                Action::from_name(&name(serde_json::json!(action))),
                Some(action)
            );
        }
        for conn in ALL_CONN {
            assert_eq!(
                ConnFailure::from_name(&name(serde_json::json!(conn))),
                Some(conn)
            );
        }
    }

    #[test]
    fn classification_serializes_as_documented() {
        let json = serde_json::to_string(&c(Category::UserUnknown, Action::Bounce));
        assert_eq!(
            json.ok().as_deref(),
            Some(r#"{"category":"user_unknown","action":"bounce"}"#)
        );
    }

    // --- robustness and speed ------------------------------------------------------------

    /// Loading compiles every pattern; the property tests share one classifier.
    static BUILTIN: std::sync::LazyLock<Classifier> = std::sync::LazyLock::new(Classifier::builtin);

    proptest::proptest! {
        #[test]
        fn classify_line_never_panics(line in "\\PC{0,300}") {
            let _ = BUILTIN.classify_line(&line);
        }

        #[test]
        fn classify_line_never_panics_on_reply_shapes(
            code in 200u16..600,
            sep in "[ -]",
            enhanced in "[245#]?[.0-9]{0,8}",
            text in "[ -~\\n]{0,200}",
        ) {
            let _ = BUILTIN.classify_line(&format!("{code}{sep}{enhanced} {text}"));
        }
    }

    /// Not a benchmark: prints a rough rate. Run with
    /// `cargo test --release -- --ignored --nocapture classify_throughput`.
    #[test]
    #[ignore]
    fn classify_throughput() {
        let classifier = Classifier::builtin();
        let lines: Vec<&str> = CORPUS
            .lines()
            .filter_map(|l| l.split_once(" | "))
            .map(|(_, reply)| reply)
            .collect();
        let rounds = 2_000;
        let start = std::time::Instant::now();
        let mut retries = 0usize;
        for _ in 0..rounds {
            for line in &lines {
                retries += usize::from(classifier.classify_line(line).action == Action::Retry);
            }
        }
        let elapsed = start.elapsed();
        let total = rounds * lines.len();
        println!(
            "{total} replies in {elapsed:?}: {:.0} replies/s ({retries} retries)",
            total as f64 / elapsed.as_secs_f64()
        );
    }
}
