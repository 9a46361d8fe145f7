//! MTA-STS (RFC 8461), the pure part: the `_mta-sts` TXT record, the policy file, and which MX
//! hosts a policy allows. The fetching and caching live in `delivery::sts`.

/// Longest policy file accepted (RFC 8461 §3.3 sets no limit; real policies are a few hundred
/// bytes).
pub const MAX_POLICY: usize = 64 * 1024;
/// Largest `max_age` honoured (RFC 8461 §3.2: at most 31557600 seconds, one year).
pub const MAX_AGE_SECS: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Deliver as usual; report what would have failed.
    Testing,
    /// No policy (a domain withdrawing its policy).
    None,
}

impl Mode {
    /// The policy file's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Its mode.
    pub mode: Mode,
    /// MX host patterns, lower case, without a trailing dot: `mx.example.com` or
    /// `*.example.net` (the wildcard stands for exactly one left-most label).
    pub mx: Vec<String>,
    /// How long it may be cached, seconds (capped at [`MAX_AGE_SECS`]).
    pub max_age: u64,
}

impl Policy {
    /// The policy as RFC 8461 §3.2 text, for TLS reports' `policy-string`.
    pub fn to_text(&self) -> String {
        let mode = match self.mode {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        };
        let mut text = format!("version: STSv1\nmode: {mode}\n");
        for mx in &self.mx {
            text.push_str(&format!("mx: {mx}\n"));
        }
        text.push_str(&format!("max_age: {}\n", self.max_age));
        text
    }

    /// Whether `host` (an MX host name) is one the policy allows.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// The policy id of a domain's `_mta-sts` TXT records (RFC 8461 §3.1): `None` when no record
/// starts with `v=STSv1`, or when more than one does (the RFC says to treat that as no policy),
/// or when the one that does has no valid `id`.
pub fn txt_id<'a>(records: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut sts = records
        .into_iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"));
    let record = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    let mut fields = record.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return None;
    }
    fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|id| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines ending in CRLF or LF; `version`
/// must be `STSv1`; `mode`, `max_age` and (unless the mode is `none`) at least one `mx` are
/// required; unknown keys are ignored. The error says what is wrong.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line without a colon: {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|_| value.len() <= 10)
                    .ok_or_else(|| format!("max_age {value:?} is not a number of seconds"))?;
                max_age = Some(secs.min(MAX_AGE_SECS));
            }
            "mx" => {
                let p = value.trim_end_matches('.').to_ascii_lowercase();
                if p.is_empty() || p.trim_start_matches("*.").contains('*') {
                    return Err(format!("mx {value:?} is not a host name or \"*.domain\""));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["v=STSv1; id=20160831085700Z;"], Some("20160831085700Z")),
            (&["v=STSv1;id=abc"], Some("abc")),
            (&["v=spf1 -all", "v=STSv1; id=1"], Some("1")),
            // Two STS records: no policy (RFC 8461 §3.1).
            (&["v=STSv1; id=1", "v=STSv1; id=2"], None),
            (&["v=STSv1; id=bad-id"], None),
            (&["v=STSv1;"], None),
            (&["v=STSv10; id=1"], None),
            (&[], None),
        ];
        for (records, want) in cases {
            assert_eq!(
                txt_id(records.iter().copied()).as_deref(),
                *want,
                "{records:?}"
            );
        }
    }

    #[test]
    fn policy_files() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\n\
             max_age: 604800\r\nextension: ignored\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604_800);
        // One left-most label for the wildcard; exact names otherwise; case and dot ignored.
        for (host, allowed) in [
            ("mail.example.com", true),
            ("MAIL.example.com.", true),
            ("mx1.example.net", true),
            ("a.b.example.net", false),
            ("example.net", false),
            ("other.example.com", false),
        ] {
            assert_eq!(p.allows(host), allowed, "{host}");
        }
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!((none.mode, none.max_age), (Mode::None, MAX_AGE_SECS));
        for (bad, why) in [
            ("mode: enforce\nmx: a\nmax_age: 1\n", "version"),
            ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: testing\nmx: a\n", "max_age"),
            (
                "version: STSv1\nmode: testing\nmx: a.*.b\nmax_age: 1\n",
                "mx",
            ),
            ("<html>not a policy</html>\n", "colon"),
        ] {
            let err = parse_policy(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
