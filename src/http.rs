//! The operator and sender HTTP surface on its own thread: health, metrics, the injection API
//! and the queue API.
//!
//! It is off the SMTP hot path: a blocking server (tiny_http) on one control thread. It never
//! touches a spool shard itself; everything that needs one goes to the owning worker through
//! `control::ControlHandle` and waits for the answer. Injected messages go through the same
//! content checks, spool and durability as SMTP: `202` means the message is on disk.
//!
//! Routes:
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`
//! - `POST /api/v1/messages` (HTTP Basic as a configured user): JSON → MIME → spool
//! - `GET|DELETE /api/v1/messages/{id}`, `POST /api/v1/messages/{id}/bounce`
//! - `GET /api/v1/queue`, `GET /api/v1/queue/summary?by=domain|sender|user|site|state`
//!   (pending recipients by key and age, as `ringmta queue summary` prints them),
//!   `POST /api/v1/queue/flush[?domain=example.net]`,
//!   `POST /api/v1/queue/bounce?domain=…|user=…` (every queued recipient, with DSNs)
//! - `GET /api/v1/sites` (every egress path: site, source, rule, connections, throttle, counts)
//! - `GET /api/v1/suspensions`, `POST /api/v1/suspensions?domain=…|site=…|source=…|user=…
//!   [&duration=10m]`, `DELETE /api/v1/suspensions/{id}` (resume)
//! - with `[autoconfig]`: `GET /mail/config-v1.1.xml`, `GET /.well-known/autoconfig/mail/
//!   config-v1.1.xml` (Thunderbird) and `GET /apple/mail.mobileconfig?emailaddress=…` (Apple)
//! - `GET /api/v1/suppressions[/{address}]`, `POST /api/v1/suppressions?address=…[&user=…]
//!   [&reason=…][&duration=30d]`, `DELETE /api/v1/suppressions/{address}[?user=…]`
//!
//! The admin routes (everything under `/api/v1` but injection) take a bearer token from
//! `[[api_tokens]]` with the `read` scope (GET) or the `write` scope (POST, DELETE); without
//! tokens configured they answer only to loopback clients (and `listen.http` may then only be a
//! loopback address). Injection takes HTTP Basic as a configured user, or a token with the
//! `inject` scope. Health, readiness, metrics and the autoconfig files take no credentials.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use serde::Deserialize;

use crate::auth::AuthService;
use crate::control::ControlHandle;
use crate::ids::QueueId;
use crate::metrics::{CoreMetrics, render};
use crate::smtp::{AuthOutcome, CommitError, Mailbox, Transaction};

/// Everything the HTTP thread needs.
pub struct Api {
    /// Per-worker metrics.
    pub metrics: Vec<Arc<CoreMetrics>>,
    /// Set once recovery is done and workers run.
    pub ready: Arc<AtomicBool>,
    /// Channels to the workers.
    pub control: ControlHandle,
    /// Credential checks (same users as SMTP).
    pub auth: AuthService,
    /// Our host name (Message-ID of built messages).
    pub hostname: String,
    /// Largest message.
    pub max_message_size: usize,
    /// The operator's delivery suspensions (shared with the workers).
    pub suspensions: Arc<crate::delivery::suspend::Suspensions>,
    /// The suppression list (shared with the workers and their sessions).
    pub suppressions: Arc<crate::suppress::Suppressions>,
    /// Bearer tokens (`[[api_tokens]]`).
    pub tokens: Vec<crate::config::tokens::ApiToken>,
    /// Each webhook's URL and counters.
    pub webhooks: Vec<(String, Arc<crate::webhook::Stats>)>,
    /// Destination sites and their egress paths (shared with the workers).
    pub sites: Arc<crate::delivery::sites::Sites>,
    /// Mail-client autoconfiguration, when `[autoconfig]` is enabled.
    pub autoconfig: Option<crate::config::autoconfig::Autoconfig>,
    /// This node's cluster membership, when `[cluster]` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Handle to the running HTTP thread.
pub struct HttpServer {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for http on {addr}: {reason}")]
pub struct HttpError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What went wrong.
    pub reason: String,
}

impl HttpServer {
    /// Binds `addr` and serves until `stop`.
    pub fn start(addr: SocketAddr, api: Api) -> Result<HttpServer, HttpError> {
        let server = tiny_http::Server::http(addr).map_err(|e| HttpError {
            addr,
            reason: e.to_string(),
        })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let s = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("ringmta-http".into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    api.respond(request);
                }
            })
            .map_err(|e| HttpError {
                addr,
                reason: e.to_string(),
            })?;
        Ok(HttpServer {
            addr: bound,
            server,
            thread: Some(thread),
        })
    }

    /// Stops accepting and joins the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn reply(code: u16, ctype: &str, body: String) -> Response {
    let mut r = tiny_http::Response::from_string(body).with_status_code(code);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", ctype) {
        r = r.with_header(h);
    }
    r
}

fn json(code: u16, value: &impl serde::Serialize) -> Response {
    reply(
        code,
        "application/json",
        serde_json::to_string(value).unwrap_or_else(|_| "{}".into()),
    )
}

fn error(code: u16, message: impl Into<String>) -> Response {
    json(code, &serde_json::json!({ "error": message.into() }))
}

impl Api {
    fn respond(&self, mut request: tiny_http::Request) {
        let url = request.url().to_owned();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method().clone();
        use tiny_http::Method::{Delete, Get, Post};
        let admin = matches!(segments.as_slice(), ["api", "v1", ..])
            && !matches!(
                (&method, segments.as_slice()),
                (Post, ["api", "v1", "messages"])
            );
        if admin && let Err(refused) = self.admin_access(&request, method == Get) {
            let _ = request.respond(refused);
            return;
        }
        let response = match (&method, segments.as_slice()) {
            (Get, ["healthz"]) => reply(200, "text/plain", "ok\n".into()),
            (Get, ["readyz"]) if self.ready.load(Ordering::Acquire) => {
                reply(200, "text/plain", "ready\n".into())
            }
            (Get, ["readyz"]) => reply(503, "text/plain", "starting\n".into()),
            (Get, ["metrics"]) => {
                let mut text = render(&self.metrics);
                path_metrics(&mut text, &self.sites.snapshot(std::time::Instant::now()));
                webhook_metrics(&mut text, &self.webhooks);
                if let Some(c) = &self.cluster {
                    c.render_metrics(&mut text);
                }
                reply(200, "text/plain; version=0.0.4", text)
            }
            // Thunderbird asks autoconfig.<domain> for either path (no credentials: public).
            (Get, ["mail", "config-v1.1.xml"])
            | (Get, [".well-known", "autoconfig", "mail", "config-v1.1.xml"]) => {
                match &self.autoconfig {
                    None => error(404, "autoconfig is not enabled"),
                    Some(a) => {
                        let domain = crate::autoconfig::address(query)
                            .and_then(|addr| Some(addr.rsplit_once('@')?.1.to_owned()))
                            .unwrap_or_else(|| a.hostname.clone());
                        reply(
                            200,
                            "application/xml",
                            crate::autoconfig::thunderbird(a, &domain),
                        )
                    }
                }
            }
            (Get, ["apple", "mail.mobileconfig"]) => match &self.autoconfig {
                None => error(404, "autoconfig is not enabled"),
                Some(a) => match crate::autoconfig::address(query) {
                    None => error(
                        400,
                        "give the user's address: ?emailaddress=user@example.com",
                    ),
                    Some(address) => match crate::autoconfig::apple_profile(a, &address) {
                        Ok(profile) => reply(200, "application/x-apple-aspen-config", profile),
                        Err(why) => error(404, why),
                    },
                },
            },
            (Get, ["api", "v1", "sites"]) => {
                json(200, &self.sites.snapshot(std::time::Instant::now()))
            }
            (Post, ["api", "v1", "messages"]) => self.inject(&mut request),
            (Get, ["api", "v1", "messages", id]) => {
                self.with_id(id, |id| match self.control.message(id) {
                    Ok(Some(info)) => json(200, &info),
                    Ok(None) => error(404, format!("no message {id}")),
                    Err(e) => error(503, e.to_string()),
                })
            }
            (Delete, ["api", "v1", "messages", id]) => {
                self.with_id(id, |id| match self.control.delete(id) {
                    Ok(Some(n)) => json(
                        200,
                        &serde_json::json!({ "id": id.to_string(), "deleted": n }),
                    ),
                    Ok(None) => error(404, format!("no message {id}")),
                    Err(e) => error(503, e.to_string()),
                })
            }
            (Post, ["api", "v1", "messages", id, "bounce"]) => {
                self.with_id(id, |id| match self.control.bounce(id) {
                    Ok(Some(n)) => json(
                        200,
                        &serde_json::json!({ "id": id.to_string(), "bounced": n }),
                    ),
                    Ok(None) => error(404, format!("no message {id}")),
                    Err(e) => error(503, e.to_string()),
                })
            }
            (Get, ["api", "v1", "queue"]) => match self.control.queue() {
                Ok(mut s) => {
                    s.sites = self.sites.by_site(&s.destinations);
                    json(200, &s)
                }
                Err(e) => error(503, e.to_string()),
            },
            (Get, ["api", "v1", "queue", "summary"]) => {
                let by = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("by="))
                    .unwrap_or("domain");
                match crate::queue::shape::By::parse(by) {
                    None => error(400, "by= takes domain, sender, user, site or state"),
                    Some(by) => {
                        let shape = if by == crate::queue::shape::By::Site {
                            self.control
                                .shape(by, now_ms(), |domain| self.sites.site_name(&domain))
                        } else {
                            self.control.shape(by, now_ms(), |key| key)
                        };
                        match shape {
                            Ok(shape) => json(200, &shape.json(by)),
                            Err(e) => error(503, e.to_string()),
                        }
                    }
                }
            }
            (Post, ["api", "v1", "queue", "flush"]) => {
                let domain = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("domain="))
                    .map(|d| d.to_ascii_lowercase());
                match self.control.flush(domain) {
                    Ok(n) => json(200, &serde_json::json!({ "rescheduled": n })),
                    Err(e) => error(503, e.to_string()),
                }
            }
            (Post, ["api", "v1", "queue", "bounce"]) => match one_target(query) {
                Ok(
                    target @ (crate::delivery::suspend::Target::Domain(_)
                    | crate::delivery::suspend::Target::User(_)),
                ) => match self.control.bounce_matching(&target) {
                    Ok(n) => json(200, &serde_json::json!({ "bounced": n })),
                    Err(e) => error(503, e.to_string()),
                },
                Ok(_) => error(400, "bounce takes domain= or user="),
                Err(e) => error(400, e),
            },
            (Get, ["api", "v1", "suppressions"]) => json(200, &self.suppressions.list(now_ms())),
            (Get, ["api", "v1", "suppressions", address]) => {
                let address = percent_decode(address);
                match self
                    .suppressions
                    .find(&address, param(query, "user").as_deref(), now_ms())
                {
                    Some(e) => json(200, &e),
                    None => error(404, format!("{address} is not suppressed")),
                }
            }
            (Post, ["api", "v1", "suppressions"]) => self.suppress(query),
            (Delete, ["api", "v1", "suppressions", address]) => {
                let address = percent_decode(address);
                match self
                    .suppressions
                    .remove(&address, param(query, "user").as_deref())
                {
                    Ok(true) => {
                        tracing::warn!(%address, "suppression removed");
                        json(200, &serde_json::json!({ "removed": address }))
                    }
                    Ok(false) => error(404, format!("{address} is not suppressed")),
                    Err(e) => error(500, format!("cannot write the suppression list: {e}")),
                }
            }
            (Get, ["api", "v1", "suspensions"]) => json(200, &self.suspensions.list(now_ms())),
            (Post, ["api", "v1", "suspensions"]) => self.suspend(query),
            (Delete, ["api", "v1", "suspensions", id]) => match id.parse::<u64>() {
                Ok(id) if self.suspensions.resume(id) => {
                    json(200, &serde_json::json!({ "resumed": id }))
                }
                Ok(id) => error(404, format!("no suspension {id}")),
                Err(_) => error(400, format!("{id:?} is not a suspension id")),
            },
            (_, ["healthz" | "readyz" | "metrics"]) => error(405, "method not allowed"),
            (Get | Post | Delete, _) => error(404, "not found"),
            _ => error(405, "method not allowed"),
        };
        let _ = request.respond(response);
    }

    /// `POST /api/v1/suspensions?<kind>=<value>[&duration=10m]` → 201 with the suspension.
    fn suspend(&self, query: &str) -> Response {
        let target = match one_target(query) {
            Ok(t) => t,
            Err(e) => return error(400, e),
        };
        let duration = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "duration")
            .map(|(_, v)| v.into_owned());
        let until_ms = match duration {
            None => None,
            Some(d) => match crate::config::resolved::parse_duration(&d) {
                Some(d) if !d.is_zero() => Some(now_ms() + d.as_millis() as u64),
                _ => return error(400, format!("duration {d:?} is not a duration such as 10m")),
            },
        };
        let s = self.suspensions.add(target, until_ms);
        tracing::warn!(id = s.id, target = ?s.target, until_ms = ?s.until_ms, "delivery suspended");
        json(201, &s)
    }

    /// Whether the request may use an admin route: a token with the scope it needs, or, with
    /// no token configured, a loopback client.
    fn admin_access(&self, request: &tiny_http::Request, read_only: bool) -> Result<(), Response> {
        if self.tokens.is_empty() {
            let local = request.remote_addr().is_some_and(|a| a.ip().is_loopback());
            return if local {
                Ok(())
            } else {
                Err(error(
                    403,
                    "no [[api_tokens]] configured: the admin API answers on loopback only",
                ))
            };
        }
        let Some(presented) = bearer(request) else {
            return Err(with_challenge(error(401, "a bearer token is required")));
        };
        let Some(token) = crate::config::tokens::find(&self.tokens, &presented) else {
            return Err(with_challenge(error(401, "invalid token")));
        };
        let (allowed, scope) = if read_only {
            (token.scopes.read, "read")
        } else {
            (token.scopes.write, "write")
        };
        if allowed {
            Ok(())
        } else {
            Err(error(
                403,
                format!("token {} lacks the {scope} scope", token.name),
            ))
        }
    }

    /// `POST /api/v1/suppressions?address=…[&user=…][&reason=…][&duration=…]` → 201 with the
    /// entry (durable).
    fn suppress(&self, query: &str) -> Response {
        let Some(address) = param(query, "address").filter(|a| Mailbox::parse(a).is_ok()) else {
            return error(400, "give address= with an email address");
        };
        let now = now_ms();
        let expires = match param(query, "duration") {
            None => None,
            Some(d) => match crate::config::resolved::parse_duration(&d) {
                Some(d) if !d.is_zero() => Some(now + d.as_millis() as u64),
                _ => return error(400, format!("duration {d:?} is not a duration such as 30d")),
            },
        };
        let reason = param(query, "reason").unwrap_or_else(|| "manual".into());
        match self.suppressions.add(
            &address,
            param(query, "user").as_deref(),
            &reason,
            "added by the operator",
            (now, expires),
            true,
        ) {
            Ok(e) => {
                tracing::warn!(address = %e.address, reason = %e.reason, "address suppressed by the operator");
                json(201, &e)
            }
            Err(e) => error(500, format!("cannot write the suppression list: {e}")),
        }
    }

    fn with_id(&self, id: &str, f: impl FnOnce(QueueId) -> Response) -> Response {
        match id.parse::<QueueId>() {
            Ok(id) => f(id),
            Err(e) => error(400, e.to_string()),
        }
    }

    fn inject(&self, request: &mut tiny_http::Request) -> Response {
        let peer = request
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        // A token with the inject scope may send as any sender; its user is `token:<name>`.
        if let Some(presented) = bearer(request) {
            return match crate::config::tokens::find(&self.tokens, &presented) {
                Some(t) if t.scopes.inject => {
                    self.inject_as(request, peer, Injector::Token(t.name.clone()))
                }
                Some(t) => error(403, format!("token {} lacks the inject scope", t.name)),
                None => with_challenge(error(401, "invalid token")),
            };
        }
        let Some((user, password)) = basic_auth(request) else {
            let mut r = error(401, "credentials required (HTTP Basic, as for SMTP AUTH)");
            if let Ok(h) =
                tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"ringmta\"")
            {
                r = r.with_header(h);
            }
            return r;
        };
        let allowed =
            match self
                .auth
                .verify_blocking(user.clone(), password, peer, std::time::Instant::now())
            {
                AuthOutcome::Success(u) => u.allowed_senders,
                AuthOutcome::BadCredentials => return error(401, "invalid credentials"),
                AuthOutcome::Throttled => {
                    return error(429, "too many failed authentication attempts");
                }
                AuthOutcome::Unavailable => return error(503, "credentials cannot be checked now"),
            };
        self.inject_as(request, peer, Injector::User(user, allowed))
    }

    /// Injection by a user (its envelope senders checked) or by a token (any sender; the
    /// message is then not an authenticated submission, and the token is named in its trace).
    fn inject_as(&self, request: &mut tiny_http::Request, peer: IpAddr, by: Injector) -> Response {
        let (user, allowed, helo) = match by {
            Injector::User(user, allowed) => (Some(user), Some(allowed), "http-api".to_owned()),
            Injector::Token(name) => (None, None, format!("http-api token:{name}")),
        };
        // Base64 attachments make JSON about 4/3 of the message; leave room for the envelope.
        let limit = self.max_message_size.saturating_mul(4) / 3 + 64 * 1024;
        let mut body = Vec::new();
        if request
            .as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .is_err()
        {
            return error(400, "cannot read the request body");
        }
        if body.len() > limit {
            return error(413, format!("request body over {limit} bytes"));
        }
        let req: InjectRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(400, format!("invalid JSON: {e}")),
        };
        let built = match build(&req, &self.hostname) {
            Ok(b) => b,
            Err(e) => return error(400, e),
        };
        if let Some(allowed) = &allowed
            && !allowed.iter().any(|p| p.matches(&built.sender))
        {
            return error(
                403,
                format!(
                    "sender {} is not allowed for user {}",
                    built.sender,
                    user.as_deref().unwrap_or("")
                ),
            );
        }
        if built.message.len() > self.max_message_size {
            return error(413, "message exceeds the maximum message size");
        }
        // Suppressed recipients are refused one by one, as RCPT refuses them on SMTP.
        let now = now_ms();
        let mut refused = Vec::new();
        let mut recipients = Vec::new();
        let sender = built.sender.to_string();
        for m in built.recipients {
            let address = m.to_string();
            match self
                .suppressions
                .refuse(&address, &sender, user.as_deref(), now)
            {
                Some(reply) => refused.push(serde_json::json!({
                    "recipient": address,
                    "reply": reply.to_string(),
                })),
                None => recipients.push(m),
            }
        }
        if recipients.is_empty() {
            return json(
                422,
                &serde_json::json!({ "error": "every recipient is suppressed", "refused": refused }),
            );
        }
        let t = Transaction::built(
            (helo, SocketAddr::new(peer, 0)),
            user,
            built.sender,
            recipients,
            built.message,
        );
        match self.control.inject(t) {
            Ok(Ok(id)) => json(
                202,
                &serde_json::json!({ "id": id.to_string(), "refused": refused }),
            ),
            Ok(Err(CommitError::Rejected(r))) => {
                let text = r.to_string().trim().to_owned();
                let code = match (r.code, r.enhanced.map(|e| (e.subject, e.detail))) {
                    (550, Some((7, 1))) => 403,
                    (552, _) => 413,
                    (400..=499, _) => 503,
                    _ => 422,
                };
                error(code, text)
            }
            Ok(Err(CommitError::SpoolFull)) => {
                error(503, "insufficient system storage, retry later")
            }
            Ok(Err(e)) => error(503, format!("{e:?}")),
            Err(e) => error(503, e.to_string()),
        }
    }
}

/// Appends the per-egress-path metrics: one series per (site, source) used since the start.
/// `ringmta_webhook_events_posted_total`, `_dropped_total` and `ringmta_webhook_failures_total`
/// by webhook (its index in `[[webhooks]]`: a URL may hold a secret).
fn webhook_metrics(out: &mut String, hooks: &[(String, Arc<crate::webhook::Stats>)]) {
    use std::fmt::Write as _;
    // The families are declared without webhooks too, so dashboards find them.
    let series = [
        (
            "ringmta_webhook_events_posted_total",
            "Events posted (2xx).",
        ),
        (
            "ringmta_webhook_events_dropped_total",
            "Events dropped: older than the webhook's max_age.",
        ),
        (
            "ringmta_webhook_failures_total",
            "Posts that failed and were retried.",
        ),
    ];
    for (i, (name, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (n, (_, s)) in hooks.iter().enumerate() {
            let v = match i {
                0 => &s.posted,
                1 => &s.dropped,
                _ => &s.failures,
            };
            let _ = writeln!(
                out,
                "{name}{{webhook=\"{n}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

fn path_metrics(out: &mut String, paths: &[crate::delivery::sites::PathInfo]) {
    use crate::delivery::sites::PathInfo;
    use std::fmt::Write as _;
    let label = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let labels = |p: &PathInfo| {
        format!(
            "site=\"{}\",source=\"{}\"",
            label(&p.site),
            label(p.source.as_deref().unwrap_or(""))
        )
    };
    type Gauge = (&'static str, &'static str, fn(&PathInfo) -> u64);
    let gauges: [Gauge; 2] = [
        (
            "ringmta_path_connections",
            "Connections open now per egress path (site, source).",
            |p| p.connections as u64,
        ),
        (
            "ringmta_path_throttled",
            "1 while a throttling reply pauses or ramps the egress path.",
            |p| u64::from(p.throttled),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in paths {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(p), value(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ringmta_path_attempts_total Attempt results per egress path: delivered (2xx), \
         deferred (4xx or connection failure), rejected (5xx).\n\
         # TYPE ringmta_path_attempts_total counter"
    );
    for p in paths {
        for (outcome, n) in [
            ("delivered", p.delivered),
            ("deferred", p.deferred),
            ("rejected", p.rejected),
        ] {
            let _ = writeln!(
                out,
                "ringmta_path_attempts_total{{{},outcome=\"{outcome}\"}} {n}",
                labels(p)
            );
        }
    }
}

/// The one `domain=`, `site=`, `source=` or `user=` of a query string.
fn one_target(query: &str) -> Result<crate::delivery::suspend::Target, String> {
    let mut targets = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "duration")
        .map(|(k, v)| crate::delivery::suspend::Target::parse(&k, &v).ok_or(k.into_owned()));
    match (targets.next(), targets.next()) {
        (Some(Ok(t)), None) => Ok(t),
        (Some(Err(k)), _) => Err(format!(
            "{k:?}: give domain=, site=, source= or user=, not empty"
        )),
        _ => Err("give exactly one of domain=, site=, source=, user=".into()),
    }
}

/// The first value of `key` in a query string.
fn param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Decodes `%XX` escapes in a path segment (a `+` stays a `+`: addresses use it).
fn percent_decode(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_ms() -> u64 {
    crate::time::unix_ms(std::time::SystemTime::now())
}

/// Who injects a message.
enum Injector {
    /// A configured user (HTTP Basic) and the envelope senders it may use.
    User(String, Vec<crate::smtp::SenderPattern>),
    /// A token with the `inject` scope, by name.
    Token(String),
}

/// The credentials of an `Authorization: <scheme> <credentials>` header (the scheme compared
/// without case, RFC 9110 §11.1).
fn authorization(request: &tiny_http::Request, scheme: &str) -> Option<String> {
    let value = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))?
        .value
        .as_str()
        .to_owned();
    let (given, credentials) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim().to_owned())
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(request: &tiny_http::Request) -> Option<String> {
    authorization(request, "Bearer")
}

/// A 401 that says which scheme to use (RFC 6750 §3).
fn with_challenge(r: Response) -> Response {
    match tiny_http::Header::from_bytes("WWW-Authenticate", "Bearer realm=\"ringmta\"") {
        Ok(h) => r.with_header(h),
        Err(()) => r,
    }
}

fn basic_auth(request: &tiny_http::Request) -> Option<(String, String)> {
    let encoded = authorization(request, "Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `POST /api/v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRequest {
    from: String,
    #[serde(default)]
    to: OneOrMany,
    #[serde(default)]
    cc: OneOrMany,
    #[serde(default)]
    bcc: OneOrMany,
    reply_to: Option<String>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    /// A complete RFC 5322 message instead of the fields above (from/to/cc/bcc stay the
    /// envelope).
    raw: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<&str> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attachment {
    filename: String,
    content_type: Option<String>,
    /// Base64.
    content: String,
}

struct Built {
    sender: Mailbox,
    recipients: Vec<Mailbox>,
    message: Vec<u8>,
}

/// `"Name <addr>"` or `"addr"` → (display name, address).
fn split_address(s: &str) -> (Option<&str>, &str) {
    match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => {
            let name = s[..a].trim().trim_matches('"').trim();
            ((!name.is_empty()).then_some(name), s[a + 1..b].trim())
        }
        _ => (None, s.trim()),
    }
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, String> {
    Mailbox::parse(split_address(s).1)
        .map_err(|e| format!("{field}: {s:?} is not a valid address ({e})"))
}

/// Builds the MIME message with mail-builder, refusing header injection.
fn build(req: &InjectRequest, hostname: &str) -> Result<Built, String> {
    let mut texts: Vec<(&str, &str)> = vec![("from", &req.from)];
    for (field, list) in [("to", &req.to), ("cc", &req.cc), ("bcc", &req.bcc)] {
        texts.extend(list.list().into_iter().map(|v| (field, v)));
    }
    if let Some(r) = &req.reply_to {
        texts.push(("reply_to", r));
    }
    if let Some(s) = &req.subject {
        texts.push(("subject", s));
    }
    for (k, v) in &req.headers {
        texts.push(("headers", k));
        texts.push(("headers", v));
    }
    for a in &req.attachments {
        texts.push(("attachments.filename", &a.filename));
        if let Some(c) = &a.content_type {
            texts.push(("attachments.content_type", c));
        }
    }
    if let Some((field, _)) = texts.iter().find(|(_, v)| v.contains(['\r', '\n'])) {
        return Err(format!("header injection: CR or LF in {field}"));
    }
    if let Some(k) = req
        .headers
        .keys()
        .find(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
    {
        return Err(format!("invalid header name {k:?}"));
    }
    let sender = mailbox("from", &req.from)?;
    let mut recipients = Vec::new();
    for (field, list) in [("to", &req.to), ("cc", &req.cc), ("bcc", &req.bcc)] {
        for r in list.list() {
            recipients.push(mailbox(field, r)?);
        }
    }
    if recipients.is_empty() {
        return Err("at least one recipient (to, cc or bcc) is needed".into());
    }
    if let Some(raw) = &req.raw {
        // Normalise line endings: the spool stores CRLF.
        let mut message = Vec::with_capacity(raw.len() + raw.len() / 40);
        let mut prev = 0u8;
        for &b in raw.as_bytes() {
            if b == b'\n' && prev != b'\r' {
                message.push(b'\r');
            }
            message.push(b);
            prev = b;
        }
        if !message.ends_with(b"\r\n") {
            message.extend_from_slice(b"\r\n");
        }
        return Ok(Built {
            sender,
            recipients,
            message,
        });
    }
    let addr = |s: &str| -> mail_builder::headers::address::Address<'static> {
        let (name, a) = split_address(s);
        match name {
            Some(n) => (n.to_owned(), a.to_owned()).into(),
            None => a.to_owned().into(),
        }
    };
    let many = |l: &OneOrMany| -> mail_builder::headers::address::Address<'static> {
        l.list().into_iter().map(addr).collect::<Vec<_>>().into()
    };
    let mut b = mail_builder::MessageBuilder::new().from(addr(&req.from));
    if !req.to.list().is_empty() {
        b = b.to(many(&req.to));
    }
    if !req.cc.list().is_empty() {
        b = b.cc(many(&req.cc));
    }
    if let Some(r) = &req.reply_to {
        b = b.reply_to(addr(r));
    }
    b = b.subject(req.subject.clone().unwrap_or_default());
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    b = b.message_id(format!("{unique:x}.api.ringmta@{hostname}"));
    for (k, v) in &req.headers {
        b = b.header(k.clone(), mail_builder::headers::raw::Raw::new(v.clone()));
    }
    if let Some(t) = &req.text {
        b = b.text_body(t.clone());
    }
    if let Some(h) = &req.html {
        b = b.html_body(h.clone());
    }
    if req.text.is_none() && req.html.is_none() {
        b = b.text_body(String::new());
    }
    for a in &req.attachments {
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.content.trim())
            .map_err(|e| format!("attachment {:?}: content is not base64 ({e})", a.filename))?;
        let ctype = a
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        b = b.attachment(ctype, a.filename.clone(), data);
    }
    let message = b
        .write_to_vec()
        .map_err(|e| format!("cannot build the message: {e}"))?;
    Ok(Built {
        sender,
        recipients,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> InjectRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn builds_mime_with_attachments_and_bcc_only_in_the_envelope() {
        let r = req(
            r#"{"from": "Alice <alice@example.com>", "to": ["bob@example.net"], "bcc": "hidden@example.org",
            "subject": "Report", "text": "see attached", "html": "<b>see</b>",
            "headers": {"X-Campaign": "42"},
            "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "aGVsbG8="}]}"#,
        );
        let b = build(&r, "mx.test").unwrap();
        let text = String::from_utf8(b.message).unwrap();
        assert_eq!(b.sender.to_string(), "alice@example.com");
        assert_eq!(b.recipients.len(), 2);
        assert!(text.contains("Subject: Report\r\n"), "{text}");
        assert!(text.contains("X-Campaign: 42\r\n"), "{text}");
        assert!(text.contains("multipart/mixed"), "{text}");
        assert!(text.contains("a.txt"), "{text}");
        assert!(
            !text.contains("hidden@example.org"),
            "Bcc must not be in the headers: {text}"
        );
    }

    #[test]
    fn header_injection_is_refused() {
        for json in [
            r#"{"from": "alice@example.com", "to": "bob@example.net", "subject": "hi\r\nBcc: victim@example.org"}"#,
            r#"{"from": "alice@example.com", "to": "bob@example.net", "headers": {"X-A": "1\nX-B: 2"}}"#,
            r#"{"from": "alice@example.com\r\n", "to": "bob@example.net"}"#,
        ] {
            let e = build(&req(json), "mx.test").err().unwrap();
            assert!(e.starts_with("header injection"), "{e}");
        }
    }

    #[test]
    fn raw_messages_are_normalised_and_addresses_checked() {
        let b = build(
            &req(
                r#"{"from": "a@example.com", "to": "b@example.net", "raw": "Subject: x\n\nbody"}"#,
            ),
            "mx",
        )
        .unwrap();
        assert_eq!(b.message, b"Subject: x\r\n\r\nbody\r\n");
        assert!(
            build(
                &req(r#"{"from": "not an address", "to": "b@example.net"}"#),
                "mx"
            )
            .is_err()
        );
        assert!(build(&req(r#"{"from": "a@example.com"}"#), "mx").is_err());
    }
}
