//! `[[webhooks]]`: where events are posted (the posting itself is the `webhook` module's).

use std::time::Duration;

/// Event types a webhook may subscribe to.
pub const EVENT_TYPES: [&str; 8] = [
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "delayed",
    "complained",
    "suppressed",
    "throttled",
];

/// One `[[webhooks]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Where events are posted (`http://` or `https://`).
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// The event types it wants (all of [`EVENT_TYPES`] by default).
    pub events: Vec<String>,
    /// Only the mail this authenticated user submitted.
    pub user: Option<String>,
    /// Events older than this when their turn comes are dropped.
    pub max_age: Duration,
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    #[test]
    fn webhooks_resolve_with_defaults_and_problems_are_named() {
        let c = from_toml(
            "[[webhooks]]\nurl = \"https://app.example/hook\"\nsecret = \"0123456789abcdef\"\n",
            "t",
        )
        .unwrap();
        let w = &c.webhooks[0];
        assert_eq!(w.events.len(), super::EVENT_TYPES.len());
        assert_eq!(w.max_age, std::time::Duration::from_secs(3 * 86_400));
        let err = from_toml(
            "[[webhooks]]\nurl = \"ftp://x\"\nsecret = \"short\"\nevents = [\"opened\"]\n\
             max_age = \"soon\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "webhooks[0].url",
            "webhooks[0].secret",
            "webhooks[0].events",
            "webhooks[0].max_age",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }
}
