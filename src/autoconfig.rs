//! The files mail clients configure themselves from, for `[autoconfig]`: Thunderbird's
//! autoconfig file (`config-v1.1.xml`, the format of Mozilla's ISPDB) and an Apple
//! configuration profile (`.mobileconfig`, a `com.apple.mail.managed` payload). Both give the
//! submission settings a user would otherwise type in: implicit TLS on the submissions port
//! first (RFC 8314), STARTTLS on the submission port second, a normal password, the user's
//! address as login. Pure: the HTTP thread serves what these return.

use sha2::{Digest, Sha256};

use crate::config::autoconfig::Autoconfig;

/// Escapes text for XML character data and attribute values.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The address a client asked for, when it is one (`local@domain`, no spaces).
pub fn address(query: &str) -> Option<String> {
    let value = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "emailaddress")
        .map(|(_, v)| v.into_owned())?;
    let (local, domain) = value.rsplit_once('@')?;
    let plausible = !local.is_empty()
        && domain.contains('.')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Thunderbird's autoconfig file for the users of `domain`.
pub fn thunderbird(a: &Autoconfig, domain: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out += "<clientConfig version=\"1.1\">\n";
    out += &format!("  <emailProvider id=\"{}\">\n", xml(domain));
    out += &format!("    <domain>{}</domain>\n", xml(domain));
    out += &format!("    <displayName>{}</displayName>\n", xml(&a.display_name));
    out += &format!(
        "    <displayShortName>{}</displayShortName>\n",
        xml(&a.display_name)
    );
    if let Some((host, port)) = &a.imap {
        out += "    <incomingServer type=\"imap\">\n";
        out += &server_body(host, *port, "SSL");
        out += "    </incomingServer>\n";
    }
    for (port, socket) in [(a.submissions_port, "SSL"), (a.submission_port, "STARTTLS")] {
        if let Some(port) = port {
            out += "    <outgoingServer type=\"smtp\">\n";
            out += &server_body(&a.hostname, port, socket);
            out += "    </outgoingServer>\n";
        }
    }
    out += "  </emailProvider>\n</clientConfig>\n";
    out
}

fn server_body(host: &str, port: u16, socket: &str) -> String {
    format!(
        "      <hostname>{}</hostname>\n      <port>{port}</port>\n      \
         <socketType>{socket}</socketType>\n      \
         <authentication>password-cleartext</authentication>\n      \
         <username>%EMAILADDRESS%</username>\n",
        xml(host)
    )
}

/// A UUID (RFC 4122 layout, version 5 style bits) derived from `seed`, so that the profile of
/// one user is the same on every download and installing it again replaces it.
fn uuid(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Why there is no Apple profile.
pub const NO_IMAP: &str = "an Apple mail profile needs an incoming server: set autoconfig.imap";

/// The Apple configuration profile for `address`. Apple's mail payload must name an incoming
/// server, so it needs `autoconfig.imap`.
pub fn apple_profile(a: &Autoconfig, address: &str) -> Result<String, &'static str> {
    let (imap_host, imap_port) = a.imap.as_ref().ok_or(NO_IMAP)?;
    let (port, ssl) = match (a.submissions_port, a.submission_port) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (p, true),
        (None, None) => return Err("no submission port to advertise"),
    };
    // Apple's OutgoingMailServerUseSSL means TLS in either form (Mail upgrades with STARTTLS).
    // One identifier per user, so that a second address's profile does not replace the first.
    let reverse: Vec<&str> = a.hostname.split('.').rev().collect();
    let user: String = Sha256::digest(address.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let id = format!("{}.ringmta.mail.{user}", reverse.join("."));
    let entries = [
        ("EmailAccountDescription", string(&a.display_name)),
        ("EmailAccountName", string(address)),
        ("EmailAccountType", string("EmailTypeIMAP")),
        ("EmailAddress", string(address)),
        (
            "IncomingMailServerAuthentication",
            string("EmailAuthPassword"),
        ),
        ("IncomingMailServerHostName", string(imap_host)),
        (
            "IncomingMailServerPortNumber",
            format!("<integer>{imap_port}</integer>"),
        ),
        ("IncomingMailServerUseSSL", "<true/>".to_owned()),
        ("IncomingMailServerUsername", string(address)),
        (
            "OutgoingMailServerAuthentication",
            string("EmailAuthPassword"),
        ),
        ("OutgoingMailServerHostName", string(&a.hostname)),
        (
            "OutgoingMailServerPortNumber",
            format!("<integer>{port}</integer>"),
        ),
        (
            "OutgoingMailServerUseSSL",
            if ssl { "<true/>" } else { "<false/>" }.to_owned(),
        ),
        ("OutgoingMailServerUsername", string(address)),
        (
            "OutgoingPasswordSameAsIncomingPassword",
            "<true/>".to_owned(),
        ),
        (
            "PayloadDisplayName",
            string(&format!("{} mail", a.display_name)),
        ),
        ("PayloadIdentifier", string(&format!("{id}.account"))),
        ("PayloadType", string("com.apple.mail.managed")),
        (
            "PayloadUUID",
            string(&uuid(&format!("account {id} {address}"))),
        ),
        ("PayloadVersion", "<integer>1</integer>".to_owned()),
    ];
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n\
         <key>PayloadContent</key>\n<array>\n<dict>\n",
    );
    for (key, value) in entries {
        out += &format!("<key>{key}</key>\n{value}\n");
    }
    out += "</dict>\n</array>\n";
    for (key, value) in [
        ("PayloadDisplayName", string(&a.display_name)),
        ("PayloadIdentifier", string(&id)),
        ("PayloadType", string("Configuration")),
        (
            "PayloadUUID",
            string(&uuid(&format!("profile {id} {address}"))),
        ),
        ("PayloadVersion", "<integer>1</integer>".to_owned()),
    ] {
        out += &format!("<key>{key}</key>\n{value}\n");
    }
    out += "</dict>\n</plist>\n";
    Ok(out)
}

fn string(s: &str) -> String {
    format!("<string>{}</string>", xml(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(imap: bool) -> Autoconfig {
        Autoconfig {
            hostname: "smtp.example.com".into(),
            display_name: "Example & Co".into(),
            submissions_port: Some(465),
            submission_port: Some(587),
            imap: imap.then(|| ("imap.example.com".to_owned(), 993)),
        }
    }

    #[test]
    fn thunderbird_lists_implicit_tls_first_and_escapes_text() {
        let x = thunderbird(&settings(false), "example.com");
        let ssl = x.find("<port>465</port>").unwrap();
        let starttls = x.find("<port>587</port>").unwrap();
        assert!(ssl < starttls, "{x}");
        assert!(x.contains("<socketType>STARTTLS</socketType>"), "{x}");
        assert!(x.contains("<username>%EMAILADDRESS%</username>"), "{x}");
        assert!(x.contains("Example &amp; Co"), "{x}");
        assert!(!x.contains("incomingServer"), "{x}");
        assert!(
            thunderbird(&settings(true), "example.com").contains("<incomingServer type=\"imap\">")
        );
    }

    #[test]
    fn the_apple_profile_needs_imap_and_is_stable_per_user() {
        assert_eq!(
            apple_profile(&settings(false), "a@example.com"),
            Err(NO_IMAP)
        );
        let p = apple_profile(&settings(true), "a@example.com").unwrap();
        assert!(p.contains("<string>com.apple.mail.managed</string>"), "{p}");
        assert_eq!(p, apple_profile(&settings(true), "a@example.com").unwrap());
        let other = apple_profile(&settings(true), "b@example.com").unwrap();
        let ids = |p: &str| -> Vec<String> {
            p.split("<key>PayloadIdentifier</key>\n<string>")
                .skip(1)
                .map(|s| s[..s.find('<').unwrap()].to_owned())
                .collect()
        };
        assert_ne!(ids(&p), ids(&other), "one identifier per user");
        let id = uuid("x");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "5");
    }

    #[test]
    fn only_plausible_addresses_are_taken_from_the_query() {
        assert_eq!(
            address("emailaddress=Bob%40Example.COM"),
            Some("Bob@example.com".into())
        );
        assert_eq!(address("emailaddress=bob"), None);
        assert_eq!(address("emailaddress=%40example.com"), None);
        assert_eq!(address("emailaddress=a%20b%40example.com"), None);
        assert_eq!(address("other=x"), None);
    }
}
