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

use serde::{Deserialize, Serialize};

mod fallback;
mod load;
mod reply_text;
mod rules;

use fallback::{connection_fallback, reply_fallback};
use load::{PatternIndex, ProblemList, parse_rule_file};
use reply_text::{ParsedReply, clip, parse_reply, recognize_connection_failure};
use rules::{Rule, RuleSet};

/// The built-in rules; `Classifier::builtin` parses them.
const BUILTIN_RULES: &str = include_str!("../rules.toml");

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
    /// The TLS handshake failed, or TLS was required and not offered.
    Tls,
    /// The next hop's certificate failed verification (the `verify` policy): untrusted,
    /// expired, or not for the host's name.
    Certificate,
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
        self.verdict(failure).class
    }

    /// Classifies one failure and names the rule that decided ([`Verdict::rule`]).
    pub fn verdict(&self, failure: &Failure<'_>) -> Verdict {
        self.decide(failure).0
    }

    /// The verdict and the rule behind it (none for a fallback).
    fn decide(&self, failure: &Failure<'_>) -> (Verdict, Option<(&RuleSet, &Rule)>) {
        let found = |f: &dyn Fn(&RuleSet) -> Option<&Rule>| {
            self.tiers
                .iter()
                .find_map(|tier| f(tier).map(|rule| (tier, rule)))
        };
        match *failure {
            Failure::Connection(conn) => match found(&|tier| tier.match_connection(conn)) {
                Some(hit) => (Verdict::of(hit.1, None), Some(hit)),
                None => (
                    Verdict::new(connection_fallback(conn), FALLBACK_CONNECTION),
                    None,
                ),
            },
            Failure::Reply {
                code,
                enhanced,
                text,
            } => {
                // RFC 5321 §4.2.1: only 4yz and 5yz replies report failures. Anything else
                // where a failure was reported means the conversation went out of step.
                if !(400..600).contains(&code) {
                    let class = Classification::new(Category::Protocol, Action::Retry);
                    return (Verdict::new(class, FALLBACK_NOT_FAILURE), None);
                }
                let text = clip(text);
                match found(&|tier| tier.match_reply(code, enhanced, text)) {
                    Some(hit) => (Verdict::of(hit.1, Some(code)), Some(hit)),
                    None => {
                        let rule = if enhanced.is_some() {
                            FALLBACK_ENHANCED
                        } else {
                            FALLBACK_CLASS
                        };
                        (Verdict::new(reply_fallback(code, enhanced), rule), None)
                    }
                }
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
        self.verdict_line(line).class
    }

    /// [`Classifier::classify_line`] with the rule that decided.
    pub fn verdict_line(&self, line: &str) -> Verdict {
        let parsed = parse_reply(line);
        self.decide_line(&parsed).0
    }

    /// Classifies one raw reply line and says why: which rule of which file fired, on what
    /// part of the reply; or which fallback decided. For `ringmta bounce classify --explain`.
    pub fn explain_line(&self, line: &str) -> Explanation {
        let parsed = parse_reply(line);
        let (verdict, hit, conn) = self.decide_line(&parsed);
        let text = clip(&parsed.text);
        Explanation::new(verdict, hit, parsed.code, parsed.enhanced, text, conn)
    }

    /// The verdict on a parsed line, the rule behind it, and the connection failure a
    /// code-less line was recognised as.
    fn decide_line(
        &self,
        parsed: &ParsedReply<'_>,
    ) -> (Verdict, Option<(&RuleSet, &Rule)>, Option<ConnFailure>) {
        if let Some(code) = parsed.code {
            let (verdict, hit) = self.decide(&Failure::Reply {
                code,
                enhanced: parsed.enhanced,
                text: &parsed.text,
            });
            return (verdict, hit, None);
        }
        let text = clip(&parsed.text);
        if let Some(conn) = recognize_connection_failure(text) {
            let (verdict, hit) = self.decide(&Failure::Connection(conn));
            return (verdict, hit, Some(conn));
        }
        let hit = self
            .tiers
            .iter()
            .find_map(|tier| tier.match_text_only(text).map(|rule| (tier, rule)));
        match hit {
            Some(hit) => (Verdict::of(hit.1, None), Some(hit), None),
            None => {
                let class = Classification::new(Category::Temporary, Action::Retry);
                (Verdict::new(class, FALLBACK_TEXT), None, None)
            }
        }
    }
}

/// The rule id of a 4xx/5xx reply no rule matched, decided by its RFC 3463 enhanced code.
pub const FALLBACK_ENHANCED: &str = "fallback.enhanced";
/// The rule id of a reply without an enhanced code that no rule matched: the reply class.
pub const FALLBACK_CLASS: &str = "fallback.class";
/// The rule id of a connection failure no rule file covers.
pub const FALLBACK_CONNECTION: &str = "fallback.connection";
/// The rule id of a code-less description that nothing recognised (retried).
pub const FALLBACK_TEXT: &str = "fallback.text";
/// The rule id of a 2xx/3xx reply reported as a failure (a protocol error, retried).
pub const FALLBACK_NOT_FAILURE: &str = "fallback.not_failure";

/// A classification and the rule that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The category and action.
    #[serde(flatten)]
    pub class: Classification,
    /// The id of the rule that fired, or one of the `fallback.*` ids.
    pub rule: &'static str,
}

impl Verdict {
    fn new(class: Classification, rule: &'static str) -> Verdict {
        Verdict { class, rule }
    }

    fn of(rule: &Rule, code: Option<u16>) -> Verdict {
        Verdict::new(rule.outcome(code), rule.id)
    }
}

/// Why a reply got its verdict; `Display` writes it for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The verdict.
    pub verdict: Verdict,
    /// Where the rule that fired comes from and its 1-based number there.
    pub source: Option<(String, usize)>,
    /// The conditions of that rule that held, as `code 5xx`, `enhanced 5.7.*`, ...
    pub conditions: Vec<String>,
    /// The pattern element that matched (1-based index for an array, the regex) and the
    /// text it matched.
    pub matched: Option<(Option<usize>, String, String)>,
    /// How the line was read: its reply code, enhanced code, or the connection failure a
    /// code-less line was taken for.
    pub read_as: String,
}

impl Explanation {
    fn new(
        verdict: Verdict,
        hit: Option<(&RuleSet, &Rule)>,
        code: Option<u16>,
        enhanced: Option<(u8, u16, u16)>,
        text: &str,
        conn: Option<ConnFailure>,
    ) -> Explanation {
        let read_as = match (code, enhanced, conn) {
            (_, _, Some(conn)) => format!("connection failure `{}`", conn.name()),
            (Some(code), Some((c, s, d)), _) => format!("reply {code}, enhanced {c}.{s}.{d}"),
            (Some(code), None, _) => format!("reply {code}, no enhanced code"),
            (None, ..) => "a description without a reply code".to_owned(),
        };
        let Some((tier, rule)) = hit else {
            return Explanation {
                verdict,
                source: None,
                conditions: Vec::new(),
                matched: None,
                read_as,
            };
        };
        let mut conditions = Vec::new();
        if let Some(code) = rule.code {
            conditions.push(format!("code {code}"));
        }
        if let Some(enhanced) = rule.enhanced {
            conditions.push(format!("enhanced {enhanced}"));
        }
        if let Some(conn) = rule.connection {
            conditions.push(format!("connection {}", conn.name()));
        }
        let matched = rule.pattern.as_ref().and_then(|_| {
            let array = rule.pattern_sources.len() > 1;
            rule.pattern_sources
                .iter()
                .enumerate()
                .find_map(|(i, source)| {
                    let regex = regex::RegexBuilder::new(source)
                        .case_insensitive(true)
                        .build()
                        .ok()?;
                    let found = regex.find(text)?;
                    Some((
                        array.then_some(i + 1),
                        source.clone(),
                        found.as_str().to_owned(),
                    ))
                })
        });
        Explanation {
            verdict,
            source: Some((tier.origin.clone(), rule.number)),
            conditions,
            matched,
            read_as,
        }
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.verdict;
        writeln!(
            f,
            "{} {} (rule {})",
            v.class.category.name(),
            v.class.action.name(),
            v.rule
        )?;
        writeln!(f, "  read as: {}", self.read_as)?;
        match &self.source {
            Some((origin, number)) => writeln!(f, "  rule {number} of {origin}")?,
            None => writeln!(f, "  no rule matched: {}", fallback_reason(v.rule))?,
        }
        if !self.conditions.is_empty() {
            writeln!(f, "  conditions: {}", self.conditions.join(", "))?;
        }
        if let Some((index, source, text)) = &self.matched {
            let element = index.map(|i| format!(" element {i}")).unwrap_or_default();
            writeln!(f, "  pattern{element} /{source}/ matched {text:?}")?;
        }
        Ok(())
    }
}

/// What a `fallback.*` rule id means, for explanations.
fn fallback_reason(rule: &str) -> &'static str {
    match rule {
        FALLBACK_ENHANCED => {
            "the RFC 3463 enhanced code gives the category, the reply class the action \
             (retry categories retry even on 5xx)"
        }
        FALLBACK_CLASS => "the reply class decides (4xx retry, 5xx bounce)",
        FALLBACK_CONNECTION => "the built-in connection-failure table decides",
        FALLBACK_NOT_FAILURE => "a 2xx/3xx reply reported as a failure is a protocol error",
        _ => "nothing recognised the text, and with no reply there is nothing final: retry",
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
    /// Two rules of one file share an id.
    #[error("rule {rule}: id `{id}` is already used by rule {first}")]
    DuplicateId {
        /// Which rule (1-based).
        rule: usize,
        /// The id.
        id: String,
        /// The rule that used it first.
        first: usize,
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

// ---------------------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------------------

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
    /// The action's name, as in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Bounce => "bounce",
        }
    }

    fn from_name(name: &str) -> Option<Action> {
        [Action::Retry, Action::Bounce]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

impl ConnFailure {
    /// The failure's name, as in rule files (`connection = "..."`).
    pub fn name(self) -> &'static str {
        use ConnFailure::*;
        match self {
            Refused => "refused",
            Timeout => "timeout",
            Reset => "reset",
            DnsNxDomain => "dns_nxdomain",
            DnsNullMx => "dns_null_mx",
            DnsServFail => "dns_servfail",
            DnsTimeout => "dns_timeout",
            DnsNoAddress => "dns_no_address",
            Tls => "tls",
            Certificate => "certificate",
            Protocol => "protocol",
        }
    }

    /// Every connection failure, in declaration order.
    pub const ALL: [ConnFailure; 11] = [
        ConnFailure::Refused,
        ConnFailure::Timeout,
        ConnFailure::Reset,
        ConnFailure::DnsNxDomain,
        ConnFailure::DnsNullMx,
        ConnFailure::DnsServFail,
        ConnFailure::DnsTimeout,
        ConnFailure::DnsNoAddress,
        ConnFailure::Tls,
        ConnFailure::Certificate,
        ConnFailure::Protocol,
    ];

    fn from_name(name: &str) -> Option<ConnFailure> {
        ConnFailure::ALL.into_iter().find(|c| c.name() == name)
    }
}

// ---------------------------------------------------------------------------------------
// Raw lines
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Rule file parsing
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests;
