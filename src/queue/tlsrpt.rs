//! SMTP TLS Reporting (RFC 8460), the pure part: reading a domain's `_smtp._tls` TXT record
//! and writing the aggregate JSON report of the sessions ringmta had with the domain's MX hosts
//! under its MTA-STS policy.
//!
//! No I/O, no clock: the counts and the times come from the caller (`delivery::tlsrpt`).

use std::collections::BTreeMap;

use serde::Serialize;

/// Where a domain wants its reports (RFC 8460 §3, `rua=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` an address.
    Mailto(String),
    /// `https:` a URL to POST to.
    Https(String),
}

/// The report addresses of a `_smtp._tls.<domain>` TXT record set: the one record that starts
/// with `v=TLSRPTv1` (none, or several, is no reporting: RFC 8460 §3), its `rua` URIs of the
/// two known schemes, at most four of them.
pub fn parse_record<'a>(records: impl IntoIterator<Item = &'a str>) -> Vec<Rua> {
    let mut tlsrpt = records.into_iter().filter(|r| {
        r.trim_start()
            .get(..10)
            .is_some_and(|v| v.eq_ignore_ascii_case("v=TLSRPTv1"))
    });
    let (Some(record), None) = (tlsrpt.next(), tlsrpt.next()) else {
        return Vec::new();
    };
    record
        .split(';')
        .filter_map(|field| field.trim().split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("rua"))
        .flat_map(|(_, value)| value.split(','))
        .filter_map(|uri| {
            let uri = uri.trim();
            if let Some(address) = uri.strip_prefix("mailto:") {
                let address = address.split('!').next().unwrap_or("");
                (address.contains('@')).then(|| Rua::Mailto(address.to_owned()))
            } else if uri.starts_with("https://") {
                Some(Rua::Https(uri.to_owned()))
            } else {
                None
            }
        })
        .take(4)
        .collect()
}

/// The sessions with one policy domain during a report period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Sessions that negotiated TLS as the policy asks.
    pub successful: u64,
    /// Failed sessions by (result type, receiving MX host).
    pub failed: BTreeMap<(ResultType, String), u64>,
}

/// RFC 8460 §4.3 result types ringmta reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResultType {
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// The certificate does not name the MX host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The MX host offered no STARTTLS.
    StarttlsNotSupported,
    /// The handshake or verification failed another way.
    ValidationFailure,
}

impl ResultType {
    /// The RFC 8460 name.
    pub fn name(self) -> &'static str {
        match self {
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::ValidationFailure => "validation-failure",
        }
    }

    /// The result type of a TLS failure, from the error's text (rustls names the reason).
    pub fn of_error(text: &str) -> ResultType {
        if text.contains("NotValidForName") || text.contains("not valid for name") {
            ResultType::CertificateHostMismatch
        } else if text.contains("Expired") || text.contains("expired") {
            ResultType::CertificateExpired
        } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
            ResultType::CertificateNotTrusted
        } else if text.contains("STARTTLS") || text.contains("not offered") {
            ResultType::StarttlsNotSupported
        } else {
            ResultType::ValidationFailure
        }
    }
}

/// What the report says about its sender and period.
#[derive(Clone, Debug)]
pub struct ReportHeader<'a> {
    /// `organization-name`: the sending host.
    pub organization: &'a str,
    /// `contact-info`: the address reports are sent from.
    pub contact: &'a str,
    /// `report-id`, unique per report.
    pub report_id: &'a str,
    /// The period, ms since the Unix epoch.
    pub start_ms: u64,
    /// The end of the period.
    pub end_ms: u64,
}

#[derive(Serialize)]
struct Json<'a> {
    #[serde(rename = "organization-name")]
    organization_name: &'a str,
    #[serde(rename = "date-range")]
    date_range: DateRange,
    #[serde(rename = "contact-info")]
    contact_info: &'a str,
    #[serde(rename = "report-id")]
    report_id: &'a str,
    policies: Vec<PolicyJson<'a>>,
}

#[derive(Serialize)]
struct DateRange {
    #[serde(rename = "start-datetime")]
    start: String,
    #[serde(rename = "end-datetime")]
    end: String,
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    policy: PolicyDesc<'a>,
    summary: Summary,
    #[serde(rename = "failure-details", skip_serializing_if = "Vec::is_empty")]
    failure_details: Vec<FailureDetail<'a>>,
}

#[derive(Serialize)]
struct PolicyDesc<'a> {
    #[serde(rename = "policy-type")]
    policy_type: &'static str,
    #[serde(rename = "policy-string")]
    policy_string: Vec<&'a str>,
    #[serde(rename = "policy-domain")]
    policy_domain: &'a str,
}

#[derive(Serialize)]
struct Summary {
    #[serde(rename = "total-successful-session-count")]
    successful: u64,
    #[serde(rename = "total-failure-session-count")]
    failed: u64,
}

#[derive(Serialize)]
struct FailureDetail<'a> {
    #[serde(rename = "result-type")]
    result_type: &'static str,
    #[serde(rename = "receiving-mx-hostname")]
    mx: &'a str,
    #[serde(rename = "failed-session-count")]
    count: u64,
}

/// The RFC 8460 §4.4 JSON report about `domain`, whose MTA-STS policy text is `policy`.
pub fn report_json(
    header: &ReportHeader<'_>,
    domain: &str,
    policy: &str,
    sessions: &Sessions,
) -> String {
    let json = Json {
        organization_name: header.organization,
        date_range: DateRange {
            start: rfc3339(header.start_ms),
            end: rfc3339(header.end_ms),
        },
        contact_info: header.contact,
        report_id: header.report_id,
        policies: vec![PolicyJson {
            policy: PolicyDesc {
                policy_type: "sts",
                policy_string: policy
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect(),
                policy_domain: domain,
            },
            summary: Summary {
                successful: sessions.successful,
                failed: sessions.failed.values().sum(),
            },
            failure_details: sessions
                .failed
                .iter()
                .map(|((result, mx), count)| FailureDetail {
                    result_type: result.name(),
                    mx,
                    count: *count,
                })
                .collect(),
        }],
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// `2026-12-02T16:00:00Z` for ms since the Unix epoch.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let day = secs / 86_400;
    let rem = secs % 86_400;
    let date = crate::time::iso_date(day * 86_400_000);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_give_their_report_uris() {
        assert_eq!(
            parse_record([
                "v=TLSRPTv1; rua=mailto:tlsrpt@example.net,https://reports.example.net/tlsrpt"
            ]),
            vec![
                Rua::Mailto("tlsrpt@example.net".into()),
                Rua::Https("https://reports.example.net/tlsrpt".into())
            ]
        );
        assert_eq!(
            parse_record(["v=spf1 -all", "V=TLSRPTv1;rua=mailto:a@example.net!10m"]),
            vec![Rua::Mailto("a@example.net".into())]
        );
        // None, two, or other schemes: no reporting.
        assert!(parse_record(["v=spf1 -all"]).is_empty());
        assert!(
            parse_record([
                "v=TLSRPTv1; rua=mailto:a@example.net",
                "v=TLSRPTv1; rua=mailto:b@example.net"
            ])
            .is_empty()
        );
        assert!(parse_record(["v=TLSRPTv1; rua=http://insecure.example/"]).is_empty());
    }

    #[test]
    fn a_report_counts_sessions_and_failures() {
        let mut sessions = Sessions {
            successful: 3,
            ..Sessions::default()
        };
        sessions.failed.insert(
            (
                ResultType::CertificateHostMismatch,
                "mx2.example.net".into(),
            ),
            2,
        );
        let header = ReportHeader {
            organization: "mx.example.com",
            contact: "tls-reports@mx.example.com",
            report_id: "2026-12-02T00:00:00Z_example.net",
            start_ms: 1_796_169_600_000,
            end_ms: 1_796_256_000_000,
        };
        let json: serde_json::Value = serde_json::from_str(&report_json(
            &header,
            "example.net",
            "version: STSv1\nmode: enforce\nmx: mx1.example.net\nmax_age: 86400\n",
            &sessions,
        ))
        .unwrap();
        assert_eq!(json["organization-name"], "mx.example.com");
        assert_eq!(json["date-range"]["start-datetime"], "2026-12-02T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "2026-12-03T00:00:00Z");
        let policy = &json["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "sts");
        assert_eq!(policy["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(policy["summary"]["total-successful-session-count"], 3);
        assert_eq!(policy["summary"]["total-failure-session-count"], 2);
        assert_eq!(
            policy["failure-details"][0]["result-type"],
            "certificate-host-mismatch"
        );
        assert_eq!(
            policy["failure-details"][0]["receiving-mx-hostname"],
            "mx2.example.net"
        );
    }

    #[test]
    fn error_texts_give_result_types() {
        let t = ResultType::of_error;
        assert_eq!(
            t("invalid peer certificate: NotValidForName"),
            ResultType::CertificateHostMismatch
        );
        assert_eq!(
            t("invalid peer certificate: UnknownIssuer"),
            ResultType::CertificateNotTrusted
        );
        assert_eq!(
            t("invalid peer certificate: Expired"),
            ResultType::CertificateExpired
        );
        assert_eq!(
            t(
                "invalid peer certificate: certificate not valid for name \"mx.example.net\"; certificate is only valid for mx2.example.net"
            ),
            ResultType::CertificateHostMismatch
        );
        assert_eq!(t("handshake failure"), ResultType::ValidationFailure);
    }
}
