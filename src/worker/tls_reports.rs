//! Sending SMTP TLS reports (RFC 8460), on worker 0: at the end of each `delivery.tls_rpt_interval`
//! the counts of every core are taken, and each policy domain that publishes a `_smtp._tls`
//! record gets its JSON report — mailed through ringmta's own queue (`mailto:`) or POSTed
//! (`https:`, on a thread of its own: the HTTP client blocks). One report per domain and
//! period, at most four addresses each; the counts are bounded by
//! `delivery::tlsrpt::MAX_DOMAINS`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::delivery::Delivery;
use crate::queue::tlsrpt::{ReportHeader, Rua, Sessions, parse_record, report_json};
use crate::smtp::{Mailbox, Transaction};
use crate::time::unix_ms;

use super::Core;

/// Starts the reporter when `delivery.tls_rpt` is on.
pub(super) fn start(core: &Rc<Core>) {
    let (Some((interval, from)), Some(counts)) = (
        core.shared.config.delivery.tls_rpt.clone(),
        core.shared.tls_rpt.clone(),
    ) else {
        return;
    };
    let core = Rc::clone(core);
    tokio_uring::spawn(async move {
        let mut shutdown = core.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let end = unix_ms(SystemTime::now());
            let (start, sessions) = counts.take(end);
            let Some(delivery) = core.delivery.borrow().clone() else {
                continue;
            };
            let hostname = core.shared.config.hostname.clone();
            let from = from
                .clone()
                .unwrap_or_else(|| format!("tls-reports@{hostname}"));
            for (domain, s) in sessions {
                send(
                    &core,
                    &delivery,
                    (&hostname, &from),
                    (start, end),
                    &domain,
                    &s,
                )
                .await;
            }
        }
    });
}

/// Sends the report about `domain` to the addresses its `_smtp._tls` record names.
async fn send(
    core: &Rc<Core>,
    delivery: &Rc<Delivery>,
    (hostname, from): (&str, &str),
    (start, end): (u64, u64),
    domain: &str,
    sessions: &Sessions,
) {
    let records = match delivery.router().txt(&format!("_smtp._tls.{domain}")).await {
        Ok(records) => records,
        Err(e) => {
            tracing::debug!(domain, error = %e, "no TLS reporting record");
            return;
        }
    };
    let ruas = parse_record(records.iter().map(String::as_str));
    if ruas.is_empty() {
        return;
    }
    let policy = delivery
        .sts_policy(domain)
        .await
        .map(|c| c.policy.to_text())
        .unwrap_or_default();
    let report_id = format!("{start}.{domain}@{hostname}");
    let json = report_json(
        &ReportHeader {
            organization: hostname,
            contact: from,
            report_id: &report_id,
            start_ms: start,
            end_ms: end,
        },
        domain,
        &policy,
        sessions,
    );
    // RFC 8460 §5.3: gzipped, as the large receivers send and expect them; the file name is
    // submitter!policy-domain!begin!end.
    let file = format!(
        "{hostname}!{domain}!{}!{}.json.gz",
        start / 1000,
        end / 1000
    );
    let gz = gzip(json.as_bytes());
    for rua in ruas {
        match rua {
            Rua::Mailto(to) => {
                let result = match mail(hostname, from, &to, domain, &report_id, &file, &gz) {
                    Ok(t) => core
                        .commit(t, SystemTime::now())
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(id) => tracing::info!(domain, to, %id, "TLS report queued"),
                    Err(e) => tracing::warn!(domain, to, error = %e, "TLS report not queued"),
                }
            }
            Rua::Https(url) => {
                let Some(target) = crate::http_client::Target::parse(&url) else {
                    tracing::warn!(domain, url, "TLS report address is not a usable URL");
                    continue;
                };
                // The report host is resolved as every other delivery lookup is (through
                // `delivery.nameservers` when set), here, before the blocking thread.
                let addrs = match delivery.router().addresses(&target.host, target.port).await {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        tracing::warn!(domain, url, error = %e, "TLS report not posted");
                        continue;
                    }
                };
                let tls = Arc::clone(&core.shared.verify_tls);
                let body = gz.clone();
                let domain = domain.to_owned();
                let _ = std::thread::Builder::new()
                    .name("ringmta-tlsrpt".into())
                    .spawn(move || post(&target, &addrs, (&url, &domain), &body, &tls));
            }
        }
    }
}

/// gzip (RFC 1952) of `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// The report as a message from `from` to `to` (RFC 8460 §5.3): the gzipped JSON attached as
/// `application/tlsrpt+gzip`, with the TLS-Report-Domain and TLS-Report-Submitter headers.
fn mail(
    hostname: &str,
    from: &str,
    to: &str,
    domain: &str,
    report_id: &str,
    file: &str,
    gz: &[u8],
) -> Result<Transaction, String> {
    use mail_builder::headers::raw::Raw;
    let sender = Mailbox::parse(from).map_err(|e| format!("tls_rpt_from {from:?}: {e}"))?;
    let recipient = Mailbox::parse(to).map_err(|e| format!("rua {to:?}: {e}"))?;
    let body = mail_builder::MessageBuilder::new()
        .from(from.to_owned())
        .to(to.to_owned())
        .subject(format!(
            "Report Domain: {domain} Submitter: {hostname} Report-ID: <{report_id}>"
        ))
        .header("TLS-Report-Domain", Raw::new(domain.to_owned()))
        .header("TLS-Report-Submitter", Raw::new(hostname.to_owned()))
        .message_id(format!("{report_id}.tlsrpt"))
        .text_body(format!(
            "This is an aggregate TLS report (RFC 8460) from {hostname} about {domain}.\r\n"
        ))
        .attachment("application/tlsrpt+gzip", file.to_owned(), gz.to_vec())
        .write_to_vec()
        .map_err(|e| format!("cannot build the report: {e}"))?;
    Ok(Transaction::built(
        (
            hostname.to_owned(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ),
        None,
        sender,
        vec![recipient],
        body,
    ))
}

/// POSTs the report to an `https:` address (RFC 8460 §5.4) at `addrs`, once; the outcome is
/// logged.
fn post(
    target: &crate::http_client::Target,
    addrs: &[std::net::SocketAddr],
    (url, domain): (&str, &str),
    body: &[u8],
    tls: &Arc<rustls::ClientConfig>,
) {
    let headers = ["Content-Type: application/tlsrpt+gzip".to_owned()];
    let request = crate::http_client::Request {
        method: "POST",
        headers: &headers,
        body,
    };
    match crate::http_client::send(
        target,
        addrs,
        &request,
        tls,
        Duration::from_secs(30),
        64 * 1024,
    ) {
        Ok(_) => tracing::info!(domain, url, "TLS report posted"),
        Err(e) => tracing::warn!(domain, url, error = %e, "TLS report not posted"),
    }
}
