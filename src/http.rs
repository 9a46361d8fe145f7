//! The operator HTTP endpoint on its own thread: `/healthz`, `/readyz` and `/metrics`.
//!
//! It is off the SMTP hot path: a blocking server (tiny_http) on one control thread that only
//! reads the workers' atomic metrics. The injection and queue API of issue 7 will be added here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::{CoreMetrics, render};

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
    /// What tiny_http said.
    pub reason: String,
}

impl HttpServer {
    /// Binds `addr` and serves until `stop`.
    pub fn start(
        addr: SocketAddr,
        metrics: Vec<Arc<CoreMetrics>>,
        ready: Arc<AtomicBool>,
    ) -> Result<HttpServer, HttpError> {
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
                    respond(request, &metrics, &ready);
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

fn respond(request: tiny_http::Request, metrics: &[Arc<CoreMetrics>], ready: &AtomicBool) {
    let text = |code: u16, body: String, ctype: &str| {
        let header = tiny_http::Header::from_bytes("Content-Type", ctype).ok();
        let mut r = tiny_http::Response::from_string(body).with_status_code(code);
        if let Some(h) = header {
            r = r.with_header(h);
        }
        r
    };
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let response = match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/healthz") => text(200, "ok\n".into(), "text/plain"),
        (tiny_http::Method::Get, "/readyz") if ready.load(Ordering::Acquire) => {
            text(200, "ready\n".into(), "text/plain")
        }
        (tiny_http::Method::Get, "/readyz") => text(503, "starting\n".into(), "text/plain"),
        (tiny_http::Method::Get, "/metrics") => {
            text(200, render(metrics), "text/plain; version=0.0.4")
        }
        (tiny_http::Method::Get, _) => text(404, "not found\n".into(), "text/plain"),
        _ => text(405, "method not allowed\n".into(), "text/plain"),
    };
    let _ = request.respond(response);
}
