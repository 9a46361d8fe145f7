//! One outbound connection to one destination: route, connect, drive a `ClientSession`, and
//! deliver queued jobs until the queue is empty or the per-connection limit is reached.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::bounce::classify::ConnFailure;
use crate::net::transport::Transport;
use crate::queue::sts::Mode;
use crate::smtp::client::{
    ClientConfig, ClientError, ClientEvent, ClientSession, MessageOutcome, OutboundEnvelope,
    OutboundRecipient, TlsPolicy,
};
use crate::smtp::{Reply, ReplyLimits};

use super::dane::{self, Dane};
use super::route::NextHop;
use super::sites::{PathOutcome, Site, site_of};
use super::{AttemptResult, Delivery, DestKey, Job};
use crate::ids::QueueId;
use crate::time::unix_ms;

/// Runs one connection for a destination until its queue is empty (or the connection fails).
pub async fn connection(delivery: Rc<Delivery>, key: &DestKey) {
    let domain = key.domain.as_str();
    let hops = match delivery.router().resolve(domain).await {
        Ok(h) => h,
        Err(e) => {
            let failure = e.as_failure();
            let detail = e.to_string();
            fail_all(&delivery, None, key, failure, &detail);
            return;
        }
    };
    // MTA-STS (RFC 8461): an enforced policy keeps only the MX hosts it names, and only with a
    // certificate that verifies; a policy in testing mode only reports.
    let mut tls_policy = delivery.tls_policy(domain);
    let mut sts_enforced = false;
    let hops = match delivery.sts_policy(domain).await {
        Some(sts) if sts.policy.mode == Mode::Enforce => {
            let names: Vec<String> = hops.iter().map(|h| h.name.clone()).collect();
            let allowed: Vec<NextHop> = hops
                .into_iter()
                .filter(|h| sts.policy.allows(&h.name))
                .collect();
            if allowed.is_empty() {
                let detail = format!(
                    "the MTA-STS policy of {domain} (enforce, id {}) allows none of its MX hosts ({})",
                    sts.id,
                    names.join(", ")
                );
                fail_all(&delivery, None, key, ConnFailure::Tls, &detail);
                return;
            }
            tls_policy = TlsPolicy::Verify;
            sts_enforced = true;
            allowed
        }
        Some(sts) if sts.policy.mode == Mode::Testing => {
            for h in hops.iter().filter(|h| !sts.policy.allows(&h.name)) {
                tracing::warn!(
                    domain,
                    mx = %h.name,
                    id = %sts.id,
                    "MX host not in the domain's MTA-STS policy (testing mode: delivering anyway)"
                );
            }
            hops
        }
        _ => hops,
    };
    // The egress path: the pool's next source in weighted round robin, or another of the
    // pool's sources when that one's path is suspended, paused or full. Without a free slot on
    // any, the destination waits (parked) until a connection on one of them closes on any core.
    let Some((source, slot)) = delivery.path_slot(key, &site_of(&hops)) else {
        return;
    };
    let from = source.as_ref().map(|s| s.address);
    // DANE (RFC 7672) is looked up per host before connecting: a host whose TLSA lookup fails
    // is passed over for the next one.
    let dane_on = delivery.config().dane
        && tls_policy != TlsPolicy::Disabled
        && !delivery.router().is_static(domain);
    let (mut transport, hop, dane) = match connect_any(&delivery, &hops, from, dane_on).await {
        Ok(connected) => connected,
        Err((failure, why)) => {
            let detail = format!("cannot connect to any mail host of {domain}: {why}");
            fail_all(&delivery, Some(slot.site()), key, failure, &detail);
            return;
        }
    };
    // Validated TLSA records of the host make TLS mandatory and say which certificate it must
    // present; they take precedence over the other policies for this host.
    let mut dane_tls = None;
    match dane {
        Dane::None => {}
        Dane::Unusable => {
            if tls_policy == TlsPolicy::Opportunistic {
                tls_policy = TlsPolicy::Required;
            }
        }
        Dane::Records(records) => {
            dane_tls = Some(dane::client_config(records));
            tls_policy = TlsPolicy::Verify;
            sts_enforced = false;
        }
    }
    let cfg = delivery.config();
    let client = ClientConfig {
        helo: source
            .as_ref()
            .map_or_else(|| cfg.hostname.clone(), |s| s.ehlo.clone()),
        tls: tls_policy,
        pipelining: true,
        auth: None,
        timeouts: delivery.config().timeouts,
        reply_limits: ReplyLimits::default(),
    };
    let mut session = ClientSession::new(client, false, delivery.clock().monotonic());
    let mut sent = 0usize;
    // Whether the connection has waited for mail: its failures then say nothing about the
    // destination's other queued jobs (the server may simply have dropped an idle client).
    let mut waited = false;
    let mut job_started = delivery.clock().monotonic();
    let mut current: Option<Job> = None;
    // The destination of the job in flight: this connection's own, or another domain of its
    // site whose jobs it carries once its own are gone.
    let mut current_key = key.clone();
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut plain = Vec::with_capacity(4096);
    let mut out = Vec::new();
    let remote = hop.name.clone();
    // How this connection is protected, for the events and metrics of its deliveries.
    let mut tls_use = crate::delivery::events::TlsUse {
        policy: match tls_policy {
            _ if dane_tls.is_some() => "dane",
            _ if sts_enforced => "mta-sts",
            TlsPolicy::Disabled => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Verify => "verify",
        },
        version: None,
        cipher: None,
    };
    loop {
        session.poll_output(&mut out);
        if !out.is_empty() {
            // A next hop that stops reading must not hold this connection slot forever.
            let written =
                tokio::time::timeout(WRITE_TIMEOUT, transport.write_all(std::mem::take(&mut out)))
                    .await;
            let res = match written {
                Ok((res, buf)) => {
                    out = buf;
                    out.clear();
                    res
                }
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                )),
            };
            if let Err(e) = res {
                give_up(
                    &delivery,
                    slot.site(),
                    key,
                    &mut current,
                    sent == 0 && !waited,
                    (ConnFailure::Reset, &format!("write to {remote}: {e}")),
                    &remote,
                );
                break;
            }
        }
        let mut closed = false;
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::StartTls => {
                    // The name the certificate must carry (under `verify`): the MX host name,
                    // or the address of a route given as one.
                    let name = rustls::pki_types::ServerName::try_from(
                        hop.name.trim_end_matches('.').to_owned(),
                    )
                    .unwrap_or_else(|_| {
                        rustls::pki_types::ServerName::IpAddress(hop.addrs[0].ip().into())
                    });
                    let handshake = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        transport.connect_tls(
                            Arc::clone(dane_tls.as_ref().unwrap_or(delivery.tls(tls_policy))),
                            name,
                        ),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "handshake timed out",
                        ))
                    });
                    // TLS-RPT counts the sessions with the MX hosts of a policy domain.
                    if let (true, Some(rpt)) = (sts_enforced, delivery.tls_rpt()) {
                        match &handshake {
                            Ok(()) => rpt.success(domain),
                            Err(e) => rpt.failure(
                                domain,
                                crate::queue::tlsrpt::ResultType::of_error(&e.to_string()),
                                &hop.name,
                            ),
                        }
                    }
                    if let Err(e) = handshake {
                        // Under `verify`, a certificate that does not check out says why.
                        let failure = if crate::net::tls::is_certificate_error(&e) {
                            ConnFailure::Certificate
                        } else {
                            ConnFailure::Tls
                        };
                        give_up(
                            &delivery,
                            slot.site(),
                            key,
                            &mut current,
                            sent == 0 && !waited,
                            (
                                failure,
                                &match dane::mismatch(&e) {
                                    Some(why) => format!("tls with {remote}: {why}"),
                                    None => format!("tls with {remote}: {e}"),
                                },
                            ),
                            &remote,
                        );
                        closed = true;
                        break;
                    }
                    if let Some(info) = transport.tls().map(crate::net::tls::tls_info) {
                        tls_use.version = Some(info.version);
                        tls_use.cipher = Some(info.cipher);
                    }
                    session.handle_tls_established(delivery.clock().monotonic());
                }
                ClientEvent::Ready => {
                    // A job with nothing left to send is skipped: the session must get the
                    // next job or a QUIT, never sit idle with no deadline. With no job, it
                    // waits `delivery.connection_idle_time` for one.
                    let mut paced = false;
                    let mut idle_until = None;
                    let mut peer_gone = false;
                    // A paused or suspended path takes no new message: the jobs wait. A path
                    // over its limit (a throttle's ramp, a smaller cluster grant) closes just
                    // enough of its connections, waiting ones first.
                    let may_send = || {
                        let now = delivery.clock().monotonic();
                        sent < slot.site().max_messages_per_connection()
                            && slot.site().accepting(now)
                            && !delivery.path_suspended(slot.site())
                            && !slot.over_limit(now)
                    };
                    let started = loop {
                        if !may_send() {
                            break None;
                        }
                        // The site's message rate: a send time reserved before each job taken.
                        if !paced {
                            paced = true;
                            let now = delivery.clock().monotonic();
                            if let Some(wait) = slot.site().rate_delay(now) {
                                tokio::time::sleep(wait).await;
                            }
                        }
                        // After a wait the server may have closed the connection (or said
                        // 421): it then ends here, with no job taken and nothing counted
                        // against the site or the mail.
                        if idle_until.is_some() && transport.peer_closed() {
                            peer_gone = true;
                            break None;
                        }
                        let Some((job_key, mut job)) =
                            delivery.next_job(key, slot.site().name(), tls_policy, &hop.name)
                        else {
                            waited = true;
                            if delivery
                                .wait_for_job(key, slot.site(), &mut idle_until, may_send)
                                .await
                            {
                                paced = false;
                                continue;
                            }
                            peer_gone = transport.peer_closed();
                            break None;
                        };
                        match start_job(&delivery, &job_key, &mut session, &mut job) {
                            Start::Sent => break Some(Some((job_key, job))),
                            Start::Gone => continue,
                            Start::Busy => {
                                delivery.requeue_front(&job_key, job);
                                break Some(None);
                            }
                        }
                    };
                    if peer_gone {
                        tracing::debug!(%remote, "idle connection closed by the server");
                        closed = true;
                        break;
                    }
                    match started {
                        None => session.quit(delivery.clock().monotonic()),
                        // The session is ending; its next event says how.
                        Some(None) => {}
                        Some(Some((job_key, job))) => {
                            sent += 1;
                            current = Some(job);
                            current_key = job_key;
                            job_started = delivery.clock().monotonic();
                        }
                    }
                }
                ClientEvent::Outcome(o) => {
                    delivery
                        .metrics()
                        .delivery_latency
                        .observe(job_started.elapsed());
                    if let Some(job) = current.take() {
                        // With VERP the next hop's DSNs come back to ringmta, which sends the
                        // sender its own (`Delivery::take_feedback`); "relayed" is its to send.
                        let passed_on = o.dsn_passed_on && delivery.bounce_domain().is_none();
                        let (mut over_limit, mut results) =
                            split_over_limit(&job, &o, &remote, passed_on);
                        // A refusal that says "slow down" pauses the site (a recipient over the
                        // hop's per-transaction limit, sent again at once, is not one).
                        if let Some((signal, reply)) = results.iter().find_map(|(_, r)| match r {
                            AttemptResult::Refused { reply, .. } => {
                                delivery.signal_of(reply).map(|s| (s, reply))
                            }
                            _ => None,
                        }) {
                            delivery.throttle(slot.site(), signal, reply);
                        }
                        // A recipient the operator bounced or deleted meanwhile is not sent
                        // again: `record` settles it (it was not delivered).
                        over_limit.retain(|r| {
                            let cancelled = delivery.is_cancelled(job.id, *r);
                            if cancelled {
                                results.push((*r, result_of(&over_limit_reply(), &remote, false)));
                            }
                            !cancelled
                        });
                        if !over_limit.is_empty() {
                            // RFC 5321 §4.5.3.1.10: recipients beyond the next hop's limit go
                            // in the next transaction, at once; this was not their attempt.
                            delivery.requeue_front(
                                &current_key,
                                Job {
                                    id: job.id,
                                    rcpts: over_limit,
                                    priority: job.priority,
                                },
                            );
                        }
                        record_on(
                            &delivery,
                            Some(slot.site()),
                            job.id,
                            &results,
                            Some(&tls_use),
                        );
                    }
                }
                ClientEvent::Failed(e) => {
                    // A refusal that says "slow down" pauses the whole site; the destination's
                    // other jobs then wait for the pause, queued, instead of each being tried
                    // and deferred.
                    let throttled = match &e {
                        ClientError::Refused(r) => delivery
                            .signal_of(r)
                            .inspect(|s| delivery.throttle(slot.site(), *s, r))
                            .is_some(),
                        _ => false,
                    };
                    let (failure, detail) = match &e {
                        ClientError::Refused(r) if current.is_some() => {
                            // A reply that ends the session (e.g. 421) during a transaction.
                            let job = current.take();
                            if let Some(job) = job {
                                let results: Vec<_> = job
                                    .rcpts
                                    .iter()
                                    .map(|r2| (*r2, result_of(r, &remote, false)))
                                    .collect();
                                record_on(
                                    &delivery,
                                    Some(slot.site()),
                                    job.id,
                                    &results,
                                    Some(&tls_use),
                                );
                            }
                            (ConnFailure::Protocol, e.to_string())
                        }
                        // A refused greeting or EHLO says something about this host or our
                        // IP ("too many connections"), not about the messages: defer them all,
                        // as Postfix does with smtp_skip_5xx_greeting.
                        ClientError::Refused(r) => (
                            ConnFailure::Protocol,
                            format!("{remote} refused the session: {}", r.one_line()),
                        ),
                        ClientError::TlsUnavailable(_) => (ConnFailure::Tls, e.to_string()),
                        ClientError::Timeout => {
                            (ConnFailure::Timeout, format!("timeout talking to {remote}"))
                        }
                        _ => (ConnFailure::Protocol, e.to_string()),
                    };
                    give_up(
                        &delivery,
                        slot.site(),
                        key,
                        &mut current,
                        sent == 0 && !waited && !throttled,
                        (failure, &detail),
                        &remote,
                    );
                    closed = true;
                    break;
                }
                ClientEvent::Closed => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            session.poll_output(&mut out);
            if !out.is_empty() {
                let _ = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    transport.write_all(std::mem::take(&mut out)),
                )
                .await;
            }
            break;
        }
        session.poll_output(&mut out);
        if !out.is_empty() {
            continue;
        }
        let read = transport.read_raw(std::mem::take(&mut raw));
        let deadline = session.poll_timeout();
        let (res, buf) = match deadline {
            Some(d) => match tokio::time::timeout_at(tokio::time::Instant::from_std(d), read).await
            {
                Ok(r) => r,
                Err(_) => {
                    session.handle_timeout(delivery.clock().monotonic());
                    raw = Vec::with_capacity(16 * 1024);
                    continue;
                }
            },
            None => read.await,
        };
        raw = buf;
        match res {
            Ok(n) if n > 0 => {
                if let Err(e) = transport.decode(&mut raw, &mut plain).await {
                    give_up(
                        &delivery,
                        slot.site(),
                        key,
                        &mut current,
                        sent == 0 && !waited,
                        (ConnFailure::Tls, &format!("tls with {remote}: {e}")),
                        &remote,
                    );
                    break;
                }
                session.handle_input(&plain, delivery.clock().monotonic());
                plain.clear();
            }
            _ => {
                give_up(
                    &delivery,
                    slot.site(),
                    key,
                    &mut current,
                    sent == 0 && !waited,
                    (
                        ConnFailure::Reset,
                        &format!("connection to {remote} closed"),
                    ),
                    &remote,
                );
                break;
            }
        }
    }
    transport.close().await;
}

enum Start {
    Sent,
    /// Nothing left to send: the message is gone (purged) or its recipients became final
    /// meanwhile (an operator's bounce or delete).
    Gone,
    /// The session cannot take a message now (it is ending).
    Busy,
}

/// Sends a job's envelope and body, for the recipients of the job that are still not final
/// (the job keeps only those).
fn start_job(
    delivery: &Delivery,
    key: &DestKey,
    session: &mut ClientSession,
    job: &mut Job,
) -> Start {
    let shard = delivery.shard().borrow();
    let (Some(view), Some(state)) = (shard.message(job.id), shard.state(job.id)) else {
        delivery.release(job.id, &job.rcpts);
        return Start::Gone;
    };
    let done: Vec<u32> = job
        .rcpts
        .iter()
        .copied()
        .filter(|r| {
            state
                .recipients
                .get(*r as usize)
                .is_none_or(|s| s.is_final())
        })
        .collect();
    if !done.is_empty() {
        delivery.release(job.id, &done);
        job.rcpts.retain(|r| !done.contains(r));
    }
    if job.rcpts.is_empty() {
        return Start::Gone;
    }
    let meta = view.meta;
    // Its own deadline passed while it waited (a paused site): it fails now, unsent.
    let deadline = view.options.expires_at_ms;
    if deadline != 0 && unix_ms(delivery.clock().now()) >= deadline {
        drop(shard);
        delivery.expire_if_due(job, deadline);
        return Start::Gone;
    }
    // Suspended (by domain or user) since it was queued: it waits with the held recipients.
    if delivery.hold_if_suspended(key, job, meta.auth_user.as_ref().map(|u| u.as_str())) {
        return Start::Gone;
    }
    let recipients = job
        .rcpts
        .iter()
        .filter_map(|r| meta.recipients.get(*r as usize))
        .map(|m| OutboundRecipient {
            address: m.address.as_str().to_owned(),
            notify: m.notify().param(),
            orcpt: m.orcpt.as_ref().map(|o| o.as_str().to_owned()),
        })
        .collect();
    // With a bounce domain, bounces come back to an address naming the message (VERP); a DSN
    // keeps its null reverse path (RFC 3464 §2: no notice about a notice).
    let reverse_path = match delivery.bounce_domain() {
        Some(domain) if !meta.reverse_path.is_empty() => crate::ids::verp_address(job.id, domain),
        _ => meta.reverse_path.as_str().to_owned(),
    };
    let envelope = OutboundEnvelope {
        reverse_path,
        recipients,
        eight_bit: meta.eight_bit(),
        smtputf8: meta.smtputf8,
        ret: meta.ret().map(|r| r.param().to_owned()),
        envid: meta.envid.as_ref().map(|e| e.as_str().to_owned()),
    };
    // The body goes from the mapping straight into the session's stuffing buffer.
    if session.send_message(&envelope, view.body, delivery.clock().monotonic()) {
        Start::Sent
    } else {
        Start::Busy
    }
}

/// Splits a transaction's per-recipient replies into the recipients the next hop refused only
/// for exceeding its per-transaction limit (`452 4.5.3`, or a bare 452 saying "too many
/// recipients"), to send again at once, and the results to record. When every recipient got
/// that reply the hop made no progress, and they are recorded as deferred like any 4xx.
fn split_over_limit(
    job: &Job,
    outcome: &MessageOutcome,
    remote: &str,
    dsn_passed_on: bool,
) -> (Vec<u32>, Vec<(u32, AttemptResult)>) {
    let replies = &outcome.recipients;
    let over = |reply: &Reply| {
        reply.code == 452
            && match reply.enhanced {
                Some(e) => (e.class, e.subject, e.detail) == (4, 5, 3),
                None => reply
                    .lines
                    .iter()
                    .any(|l| l.to_ascii_lowercase().contains("too many recipients")),
            }
    };
    let pairs = job.rcpts.iter().zip(replies);
    let progress = pairs.clone().any(|(_, reply)| !over(reply));
    let mut over_limit = Vec::new();
    let mut results = Vec::new();
    for (r, reply) in pairs {
        if progress && over(reply) {
            over_limit.push(*r);
        } else {
            results.push((*r, result_of(reply, remote, dsn_passed_on)));
        }
    }
    (over_limit, results)
}

/// The reply a recipient beyond the next hop's per-transaction limit got.
fn over_limit_reply() -> Reply {
    Reply::with_enhanced(452, (4, 5, 3), "Too many recipients")
}

fn result_of(reply: &Reply, remote: &str, dsn_passed_on: bool) -> AttemptResult {
    if (200..300).contains(&reply.code) {
        return AttemptResult::Delivered {
            reply: reply.clone(),
            remote: remote.to_owned(),
            dsn_passed_on,
        };
    }
    AttemptResult::Refused {
        reply: reply.clone(),
        remote: remote.to_owned(),
    }
}

/// The connection failed: the job in flight gets the failure; with `drain_queue` (the
/// connection never carried a message), every queued job of the destination does too (they
/// would fail the same way, and a new connection must not be started in a tight loop).
fn give_up(
    delivery: &Delivery,
    site: &Site,
    key: &DestKey,
    current: &mut Option<Job>,
    drain_queue: bool,
    (failure, detail): (ConnFailure, &str),
    remote: &str,
) {
    if let Some(job) = current.take() {
        fail_job(delivery, Some(site), &job, failure, detail, remote);
    }
    if drain_queue {
        for job in delivery.drain_jobs(key) {
            fail_job(delivery, Some(site), &job, failure, detail, remote);
        }
    }
}

/// Longest a single write or TLS handshake to a next hop may take (RFC 5321 §4.5.3.2.5 gives
/// 3 minutes per data block).
const WRITE_TIMEOUT: Duration = Duration::from_secs(180);

/// Fails every queued job of `key` before a connection could carry them.
fn fail_all(
    delivery: &Delivery,
    site: Option<&Site>,
    key: &DestKey,
    failure: ConnFailure,
    detail: &str,
) {
    for job in delivery.drain_jobs(key) {
        fail_job(delivery, site, &job, failure, detail, "");
    }
}

fn fail_job(
    delivery: &Delivery,
    site: Option<&Site>,
    job: &Job,
    failure: ConnFailure,
    detail: &str,
    remote: &str,
) {
    let results: Vec<_> = job
        .rcpts
        .iter()
        .map(|r| {
            (
                *r,
                AttemptResult::Connection {
                    failure,
                    detail: detail.to_owned(),
                    remote: remote.to_owned(),
                },
            )
        })
        .collect();
    record_on(delivery, site, job.id, &results, None);
}

/// Records an attempt's results, and counts them on the egress path that made the attempt.
fn record_on(
    delivery: &Delivery,
    site: Option<&Site>,
    id: QueueId,
    results: &[(u32, AttemptResult)],
    tls: Option<&crate::delivery::events::TlsUse>,
) {
    if let Some(site) = site {
        for (_, r) in results {
            site.count(match r {
                AttemptResult::Delivered { .. } => PathOutcome::Delivered,
                AttemptResult::Refused { reply, .. } if reply.code >= 500 => PathOutcome::Rejected,
                _ => PathOutcome::Deferred,
            });
        }
    }
    delivery.record_with(id, results, tls);
}

/// Connects to the first reachable address of the first reachable host, from the local address
/// `from` when there is one (addresses of the other IP family are skipped then).
/// Connects to the first host that answers, in order, with what DANE asks of it (looked up
/// first when `dane_on`: a host whose TLSA lookup fails is passed over). Without any, the
/// failure to record: the last DANE lookup error if no host could be tried, else a refusal.
async fn connect_any(
    delivery: &Delivery,
    hops: &[NextHop],
    from: Option<IpAddr>,
    dane_on: bool,
) -> Result<(Transport, NextHop, Dane), (ConnFailure, String)> {
    let timeout = delivery.config().connect_timeout;
    let mut failure = (ConnFailure::Refused, "no host answered".to_owned());
    for hop in hops {
        let dane = if dane_on {
            match dane::lookup(&delivery.router(), &hop.name).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(host = %hop.name, error = %e, "DANE lookup failed; trying the next host");
                    failure = (ConnFailure::Tls, e);
                    continue;
                }
            }
        } else {
            Dane::None
        };
        for addr in &hop.addrs {
            if from.is_some_and(|f| f.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            if let Some(t) = connect(*addr, from, timeout).await {
                return Ok((t, hop.clone(), dane));
            }
        }
        failure = (ConnFailure::Refused, "no host answered".to_owned());
    }
    Err(failure)
}

async fn connect(addr: SocketAddr, from: Option<IpAddr>, timeout: Duration) -> Option<Transport> {
    let connecting = async {
        match from {
            Some(local) => Transport::connect_from(addr, local).await,
            None => Transport::connect(addr).await,
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "connect failed");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "connect timed out");
            None
        }
    }
}
