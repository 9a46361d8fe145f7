//! A loaded rule file and how a failure is matched against it: reply code, enhanced code,
//! pattern or connection failure, first match wins.

use std::fmt;

use regex::Regex;

use super::{Action, Category, Classification, ConnFailure};

/// The rules of one file, in file order.
#[derive(Clone, Debug)]
pub(super) struct RuleSet {
    /// Where the rules came from (a path, or `builtin rules.toml`).
    pub(super) origin: String,
    pub(super) rules: Vec<Rule>,
}

/// One `[[rule]]`; every condition that is set must hold.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    /// 1-based position in its file.
    pub(super) number: usize,
    /// The rule's id (`id` in the file, else `<origin>#<number>`), interned for the life of
    /// the process so that verdicts carry it without allocating.
    pub(super) id: &'static str,
    /// The pattern's sources as written (an array's elements in order), for explanations.
    pub(super) pattern_sources: Box<[String]>,
    pub(super) code: Option<CodeMatch>,
    pub(super) enhanced: Option<EnhancedMatch>,
    /// Case-insensitive; an array of patterns is compiled as one alternation.
    pub(super) pattern: Option<Regex>,
    /// Set only when `code`, `enhanced` and `pattern` are not (checked at load).
    pub(super) connection: Option<ConnFailure>,
    pub(super) category: Category,
    pub(super) action: RuleAction,
}

/// A rule's `action`: a fixed one, or `by_class` (bounce a 5xx reply, retry anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RuleAction {
    Fixed(Action),
    ByClass,
}

impl Rule {
    /// The verdict of this rule for a reply with `code` (none for a connection failure or a
    /// code-less description, which are retried under `by_class`).
    pub(super) fn outcome(&self, code: Option<u16>) -> Classification {
        let action = match self.action {
            RuleAction::Fixed(action) => action,
            RuleAction::ByClass if code.is_some_and(|c| c / 100 == 5) => Action::Bounce,
            RuleAction::ByClass => Action::Retry,
        };
        Classification::new(self.category, action)
    }
}

/// A reply code with wildcards: `"5xx"` is `[Some(5), None, None]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CodeMatch(pub(super) [Option<u8>; 3]);

/// An enhanced code with wildcards: `"5.7.*"` has `detail: None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EnhancedMatch {
    pub(super) class: Option<u8>,
    pub(super) subject: Option<u16>,
    pub(super) detail: Option<u16>,
}

impl RuleSet {
    pub(super) fn match_connection(&self, conn: ConnFailure) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.connection == Some(conn))
    }

    pub(super) fn match_reply(
        &self,
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        text: &str,
    ) -> Option<&Rule> {
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
            return Some(rule);
        }
        None
    }

    /// Text with no reply code can only meet rules that ask for nothing but a pattern.
    pub(super) fn match_text_only(&self, text: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.code.is_none() && rule.enhanced.is_none())
            .find(|rule| rule.pattern.as_ref().is_some_and(|p| p.is_match(text)))
    }
}

impl CodeMatch {
    pub(super) fn matches(self, code: u16) -> bool {
        let digits = [code / 100, code / 10 % 10, code % 10];
        self.0
            .iter()
            .zip(digits)
            .all(|(want, got)| want.is_none_or(|w| u16::from(w) == got))
    }
}

impl EnhancedMatch {
    pub(super) fn matches(self, (class, subject, detail): (u8, u16, u16)) -> bool {
        self.class.is_none_or(|c| c == class)
            && self.subject.is_none_or(|s| s == subject)
            && self.detail.is_none_or(|d| d == detail)
    }
}

impl fmt::Display for CodeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for digit in self.0 {
            match digit {
                Some(d) => write!(f, "{d}")?,
                None => f.write_str("x")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for EnhancedMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: Option<u16>| p.map_or_else(|| "*".to_owned(), |p| p.to_string());
        write!(
            f,
            "{}.{}.{}",
            part(self.class.map(u16::from)),
            part(self.subject),
            part(self.detail)
        )
    }
}
