//! `[autoconfig]`: the settings mail clients fetch to configure themselves (Thunderbird's
//! autoconfig file, an Apple configuration profile), served on `listen.http`.

use serde::Deserialize;

use super::listen::Listener;
use super::resolved::Resolver;
use crate::smtp::PortRole;

/// `[autoconfig]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoconfig {
    /// Serve the files. Default: false.
    pub enabled: Option<bool>,
    /// The host name clients connect to for submission. Default: `hostname`.
    pub hostname: Option<String>,
    /// The provider's name clients show. Default: the host name.
    pub display_name: Option<String>,
    /// The implicit-TLS submission port clients use (behind NAT it may differ from the one
    /// bound). Default: `listen.submissions`'s port.
    pub submissions_port: Option<u16>,
    /// The STARTTLS submission port. Default: `listen.submission`'s port.
    pub submission_port: Option<u16>,
    /// The IMAP server (`host:port`, implicit TLS) where the users' mailboxes are, when there is
    /// one: Thunderbird offers it, and Apple's profile needs it. ringmta itself has none.
    pub imap: Option<String>,
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autoconfig {
    /// The submission host name.
    pub hostname: String,
    /// The provider's name.
    pub display_name: String,
    /// Implicit-TLS submission port (preferred, RFC 8314), if any.
    pub submissions_port: Option<u16>,
    /// STARTTLS submission port, if any.
    pub submission_port: Option<u16>,
    /// The IMAP host and port, if any.
    pub imap: Option<(String, u16)>,
}

/// Resolves `[autoconfig]`: `None` unless enabled.
pub(super) fn resolve(
    r: &mut Resolver,
    raw: RawAutoconfig,
    hostname: &str,
    listeners: &[Listener],
    http: bool,
) -> Option<Autoconfig> {
    if !raw.enabled.unwrap_or(false) {
        return None;
    }
    let port_of = |role: PortRole| {
        listeners
            .iter()
            .find(|l| l.role == role)
            .map(|l| l.addr.port())
            .filter(|&p| p != 0)
    };
    let submissions_port = raw
        .submissions_port
        .or_else(|| port_of(PortRole::Submissions));
    let submission_port = raw
        .submission_port
        .or_else(|| port_of(PortRole::Submission));
    if submissions_port.is_none() && submission_port.is_none() {
        r.problem(
            "autoconfig.enabled",
            "no submission port to advertise: set autoconfig.submissions_port or \
             autoconfig.submission_port, or a fixed listen.submissions or listen.submission port",
        );
    }
    if !http {
        r.problem(
            "autoconfig.enabled",
            "the files are served on listen.http, which is not set",
        );
    }
    let imap = raw.imap.as_deref().and_then(|s| {
        let parsed = s
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p != 0);
        if parsed.is_none() {
            r.problem("autoconfig.imap", format!("{s:?} is not host:port"));
        }
        parsed
    });
    let hostname = raw.hostname.unwrap_or_else(|| hostname.to_owned());
    Some(Autoconfig {
        display_name: raw.display_name.unwrap_or_else(|| hostname.clone()),
        hostname,
        submissions_port,
        submission_port,
        imap,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    #[test]
    fn autoconfig_takes_the_listeners_ports_unless_told_and_names_its_problems() {
        let c = from_toml(
            "hostname = \"mx.example.com\"\n[listen]\nsubmissions = [\"0.0.0.0:465\"]\n\
             submission = [\"0.0.0.0:587\"]\nhttp = \"127.0.0.1:8025\"\n[autoconfig]\nenabled = true\n",
            "t",
        )
        .unwrap();
        let a = c.autoconfig.unwrap();
        assert_eq!(a.hostname, "mx.example.com");
        assert_eq!(a.display_name, "mx.example.com");
        assert_eq!(
            (a.submissions_port, a.submission_port),
            (Some(465), Some(587))
        );
        assert_eq!(a.imap, None);
        let off = from_toml("", "t").unwrap();
        assert_eq!(off.autoconfig, None);
        let err = from_toml(
            "[listen]\nsubmissions = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]\nhttp = \"\"\n\
             [autoconfig]\nenabled = true\nimap = \"imap.example.com\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no submission port to advertise"), "{err}");
        assert!(err.contains("listen.http, which is not set"), "{err}");
        assert!(err.contains("autoconfig.imap"), "{err}");
    }
}
