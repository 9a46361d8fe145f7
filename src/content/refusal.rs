//! Why content checks refuse a message, and the one table that turns each reason into the
//! SMTP reply the client gets (as `smtp::error` does for protocol errors).

use crate::smtp::Reply;

use super::mime::MimeError;

/// A message the content checks will not take.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The header section is over `limits.max_header_size`.
    HeaderTooBig,
    /// The MIME structure is over a limit or broken.
    Structure(MimeError),
    /// An authenticated submission without a usable header From.
    NoFrom,
    /// An authenticated submission whose header From is not the user's (RFC 6409 §8).
    FromNotOwned {
        /// The header From address.
        from: String,
        /// The authenticated user.
        user: String,
    },
    /// clamd found malware.
    Malware {
        /// The signature name, printable ASCII.
        signature: String,
    },
    /// rspamd says reject.
    Spam {
        /// rspamd's score.
        score: f64,
    },
    /// rspamd says soft reject (rate limits and the like).
    SpamDeferred,
    /// rspamd says greylist.
    Greylisted,
    /// A scanner failed and `on_error = "tempfail"`.
    ScannerUnavailable,
}

impl From<&Refusal> for Reply {
    fn from(r: &Refusal) -> Reply {
        let (code, enhanced, text) = match r {
            Refusal::HeaderTooBig => (
                552,
                (5, 3, 4),
                "Message header section exceeds the size limit".to_owned(),
            ),
            Refusal::Structure(e) => (554, (5, 6, 0), format!("Message structure rejected: {e}")),
            Refusal::NoFrom => (
                550,
                (5, 6, 0),
                "Message has no valid From header".to_owned(),
            ),
            Refusal::FromNotOwned { from, user } => (
                550,
                (5, 7, 1),
                format!(
                    "Sender address rejected: header From <{from}> does not match your authenticated address {user}"
                ),
            ),
            Refusal::Malware { signature } => (
                554,
                (5, 7, 1),
                format!("Message rejected: malware found ({signature})"),
            ),
            Refusal::Spam { score } => (
                550,
                (5, 7, 1),
                format!("Message rejected as spam (score {score:.1})"),
            ),
            Refusal::SpamDeferred => (
                451,
                (4, 7, 1),
                "Message deferred by the spam filter, try again later".to_owned(),
            ),
            Refusal::Greylisted => (451, (4, 7, 1), "Greylisted, try again later".to_owned()),
            Refusal::ScannerUnavailable => (
                451,
                (4, 7, 1),
                "Content scanner unavailable, try again later".to_owned(),
            ),
        };
        Reply::with_enhanced(code, enhanced, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal's reply: its code, and an enhanced code of the same class (RFC 3463 §2);
    /// what a client may retry is a 4xx, what it may not is a 5xx.
    #[test]
    fn each_refusal_has_one_reply_whose_classes_agree() {
        let table = [
            (Refusal::HeaderTooBig, "552 5.3.4"),
            (Refusal::Structure(MimeError::TooDeep(3)), "554 5.6.0"),
            (Refusal::NoFrom, "550 5.6.0"),
            (
                Refusal::FromNotOwned {
                    from: "mallory@example.org".into(),
                    user: "alice@example.com".into(),
                },
                "550 5.7.1",
            ),
            (
                Refusal::Malware {
                    signature: "Eicar-Test-Signature".into(),
                },
                "554 5.7.1",
            ),
            (Refusal::Spam { score: 17.25 }, "550 5.7.1"),
            (Refusal::SpamDeferred, "451 4.7.1"),
            (Refusal::Greylisted, "451 4.7.1"),
            (Refusal::ScannerUnavailable, "451 4.7.1"),
        ];
        for (refusal, start) in table {
            let reply = Reply::from(&refusal);
            let line = reply.one_line();
            assert!(line.starts_with(start), "{refusal:?}: {line}");
            let enhanced = reply.enhanced.unwrap();
            assert_eq!(u16::from(enhanced.class), reply.code / 100, "{line}");
        }
        let spam = Reply::from(&Refusal::Spam { score: 17.25 }).one_line();
        assert!(
            spam.ends_with("(score 17.2)") || spam.ends_with("(score 17.3)"),
            "{spam}"
        );
    }
}
