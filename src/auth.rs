//! Credential checks off the worker cores.
//!
//! argon2 verification takes tens of milliseconds by design; running it on a worker would stall
//! every other session of that core. Sessions send credentials to a small pool of verifier
//! threads and get the outcome back through a oneshot channel. The pool also keeps the per-IP
//! failure throttle (shared by all cores, so an attacker spreading connections over cores gains
//! nothing) and a short-lived cache of successful verifications keyed by a secret-keyed hash,
//! so an application that opens a session per message pays argon2 once per cache lifetime, not
//! once per message.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use tokio::sync::oneshot;

use crate::config::resolved::{Secret, User};
use crate::ratelimit::IpCounter;
use crate::smtp::{AuthOutcome, AuthUser, SenderPattern};

/// How long a successful verification is remembered.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// Per-IP throttle settings.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed within `window` before every attempt from that IP is refused.
    pub max_failures: u32,
    /// Length of the window.
    pub window: Duration,
}

struct Entry {
    secret: Secret,
    allowed: Vec<SenderPattern>,
}

struct State {
    users: std::sync::RwLock<HashMap<String, Entry>>,
    failures: Arc<IpCounter>,
    cache: Mutex<HashMap<u64, Instant>>,
    hasher: std::hash::RandomState,
    policy: ThrottlePolicy,
}

struct Job {
    username: String,
    password: String,
    ip: IpAddr,
    /// When the client asked (failures are counted at this time).
    at: Instant,
    reply: oneshot::Sender<AuthOutcome>,
}

/// Handle to the verifier pool; cheap to clone, one per worker.
#[derive(Clone)]
pub struct AuthService {
    tx: crossbeam_channel::Sender<Job>,
    state: Arc<State>,
}

impl AuthService {
    /// Starts `threads` verifier threads for `users`.
    pub fn start(users: &[User], policy: ThrottlePolicy, threads: usize) -> AuthService {
        let users = user_map(users);
        let state = Arc::new(State {
            users: std::sync::RwLock::new(users),
            failures: Arc::new(IpCounter::new(policy.window)),
            cache: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
            policy,
        });
        let reload_state = Arc::clone(&state);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(4096);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name(format!("ringmta-auth-{i}"))
                .spawn(move || {
                    for job in rx {
                        let outcome = state.verify(&job.username, &job.password, job.ip, job.at);
                        let _ = job.reply.send(outcome);
                    }
                })
                // Invariant: thread creation fails only when the process is out of resources at
                // start-up, where aborting with the reason is the right outcome.
                .expect("spawn auth thread");
        }
        AuthService {
            tx,
            state: reload_state,
        }
    }

    /// The per-address AUTH failure counter (a cluster shares it), when the throttle is on.
    pub fn failure_counter(&self) -> Option<Arc<IpCounter>> {
        (self.state.policy.max_failures > 0).then(|| Arc::clone(&self.state.failures))
    }

    /// Replaces the users (SIGHUP reload). Cached verifications are dropped, so a changed
    /// password takes effect at once.
    pub fn reload_users(&self, users: &[User]) {
        let map = user_map(users);
        if let Ok(mut u) = self.state.users.write() {
            *u = map;
        }
        if let Ok(mut c) = self.state.cache.lock() {
            c.clear();
        }
    }

    /// As `verify`, for a thread outside any runtime (the HTTP thread): blocks until the
    /// verifier answers.
    pub fn verify_blocking(
        &self,
        username: String,
        password: String,
        ip: IpAddr,
        now: Instant,
    ) -> AuthOutcome {
        match self.queue(username, password, ip, now) {
            Some(rx) => rx.blocking_recv().unwrap_or(AuthOutcome::Unavailable),
            None => AuthOutcome::Unavailable,
        }
    }

    /// Verifies credentials off-core. A full queue counts as a temporary refusal.
    pub async fn verify(
        &self,
        username: String,
        password: String,
        ip: IpAddr,
        now: Instant,
    ) -> AuthOutcome {
        match self.queue(username, password, ip, now) {
            Some(rx) => rx.await.unwrap_or(AuthOutcome::Unavailable),
            None => AuthOutcome::Unavailable,
        }
    }

    /// Hands a check to the verifier threads; `None` when they are behind or gone (a
    /// temporary failure, not the client's fault). A dropped answer means the same.
    fn queue(
        &self,
        username: String,
        password: String,
        ip: IpAddr,
        at: Instant,
    ) -> Option<oneshot::Receiver<AuthOutcome>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            username,
            password,
            ip,
            at,
            reply,
        };
        self.tx.try_send(job).ok().map(|()| rx)
    }
}

impl State {
    fn verify(&self, username: &str, password: &str, ip: IpAddr, now: Instant) -> AuthOutcome {
        if self.is_throttled(ip, now) {
            return AuthOutcome::Throttled;
        }
        let key = username.to_lowercase();
        let users = match self.users.read() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(entry) = users.get(&key) else {
            // Same cost as a real check so that user names cannot be probed by timing.
            let _ = argon2::Argon2::default().hash_password_into(
                password.as_bytes(),
                b"ringmta-dummy-salt",
                &mut [0u8; 32],
            );
            self.record_failure(ip, now);
            return AuthOutcome::BadCredentials;
        };
        let tag = self.hasher.hash_one((&key, password));
        let cached = self
            .cache
            .lock()
            .map(|c| c.get(&tag).is_some_and(|t| *t > now))
            .unwrap_or(false);
        let ok = cached
            || match &entry.secret {
                Secret::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
                Secret::Argon2(phc) => PasswordHash::new(phc)
                    .map(|h| {
                        argon2::Argon2::default()
                            .verify_password(password.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false),
            };
        if !ok {
            self.record_failure(ip, now);
            return AuthOutcome::BadCredentials;
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 100_000 {
                c.retain(|_, t| *t > now);
            }
            c.insert(tag, now + CACHE_TTL);
        }
        AuthOutcome::Success(AuthUser {
            name: username.to_owned(),
            allowed_senders: entry.allowed.clone(),
        })
    }

    /// `max_failures == 0` turns the throttle off.
    fn is_throttled(&self, ip: IpAddr, now: Instant) -> bool {
        self.policy.max_failures > 0 && self.failures.count(ip, now) >= self.policy.max_failures
    }

    fn record_failure(&self, ip: IpAddr, now: Instant) {
        self.failures.add(ip, now);
    }
}

fn user_map(users: &[User]) -> HashMap<String, Entry> {
    users
        .iter()
        .map(|u| {
            let allowed = u
                .allowed_senders
                .iter()
                .filter_map(|p| SenderPattern::parse(p).ok())
                .collect();
            (
                u.username.to_lowercase(),
                Entry {
                    secret: u.secret.clone(),
                    allowed,
                },
            )
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hashes a password as argon2id with a random salt (for `ringmta hash-password`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(secret: Secret) -> User {
        User {
            username: "alice@example.com".into(),
            secret,
            allowed_senders: vec!["*@example.com".into()],
            egress_pool: None,
            max_queue_lifetime: None,
            notify: None,
        }
    }

    fn run(service: &AuthService, u: &str, p: &str, ip: &str) -> AuthOutcome {
        tokio_uring::start(service.verify(u.into(), p.into(), ip.parse().unwrap(), Instant::now()))
    }

    #[test]
    fn argon2_hash_verifies_and_wrong_password_fails() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let policy = ThrottlePolicy {
            max_failures: 10,
            window: Duration::from_secs(60),
        };
        let svc = AuthService::start(&[user(Secret::Argon2(hash))], policy, 1);
        assert!(
            matches!(run(&svc, "alice@example.com", "s3cret", "127.0.0.1"), AuthOutcome::Success(u) if u.allowed_senders.len() == 1)
        );
        assert!(matches!(
            run(&svc, "ALICE@example.com", "s3cret", "127.0.0.1"),
            AuthOutcome::Success(_)
        ));
        assert!(matches!(
            run(&svc, "alice@example.com", "nope", "127.0.0.1"),
            AuthOutcome::BadCredentials
        ));
        assert!(matches!(
            run(&svc, "bob@example.com", "s3cret", "127.0.0.1"),
            AuthOutcome::BadCredentials
        ));
    }

    #[test]
    fn failures_throttle_the_ip_not_others() {
        let policy = ThrottlePolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
        };
        let svc = AuthService::start(&[user(Secret::Plain("pw".into()))], policy, 1);
        for _ in 0..3 {
            assert!(matches!(
                run(&svc, "alice@example.com", "bad", "127.0.0.9"),
                AuthOutcome::BadCredentials
            ));
        }
        // Even the right password is refused from the throttled address...
        assert!(matches!(
            run(&svc, "alice@example.com", "pw", "127.0.0.9"),
            AuthOutcome::Throttled
        ));
        // ...but not from another one.
        assert!(matches!(
            run(&svc, "alice@example.com", "pw", "127.0.0.10"),
            AuthOutcome::Success(_)
        ));
    }
}
