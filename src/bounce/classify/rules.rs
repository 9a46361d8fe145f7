//! A loaded rule file and how a failure is matched against it: reply code, enhanced code,
//! pattern or connection failure, first match wins.

use regex::Regex;

use super::{Classification, ConnFailure};

/// The rules of one file, in file order.
#[derive(Clone, Debug)]
pub(super) struct RuleSet {
    pub(super) rules: Vec<Rule>,
}

/// One `[[rule]]`; every condition that is set must hold.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub(super) code: Option<CodeMatch>,
    pub(super) enhanced: Option<EnhancedMatch>,
    /// Case-insensitive; an array of patterns is compiled as one alternation.
    pub(super) pattern: Option<Regex>,
    /// Set only when `code`, `enhanced` and `pattern` are not (checked at load).
    pub(super) connection: Option<ConnFailure>,
    pub(super) outcome: Classification,
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
    pub(super) fn match_connection(&self, conn: ConnFailure) -> Option<Classification> {
        self.rules
            .iter()
            .find(|rule| rule.connection == Some(conn))
            .map(|rule| rule.outcome)
    }

    pub(super) fn match_reply(
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
    pub(super) fn match_text_only(&self, text: &str) -> Option<Classification> {
        self.rules
            .iter()
            .filter(|rule| rule.code.is_none() && rule.enhanced.is_none())
            .find(|rule| rule.pattern.as_ref().is_some_and(|p| p.is_match(text)))
            .map(|rule| rule.outcome)
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
