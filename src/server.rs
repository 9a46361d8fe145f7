//! Start-up and shutdown of `ringmta serve`: lock the spool, recover the shards, bind, start the
//! workers, wait for signals, and stop cleanly.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::auth::AuthService;
use crate::config::Config;
use crate::net::listen::bind_all;
use crate::smtp::PortRole;
use crate::spool::Durability;
use crate::spool::{self, Shard, ShardConfig};
use crate::time::unix_ms;
use crate::worker::shared::{build_classifier, users_of};
use crate::worker::{self, Shared, WorkerSpec};

/// Runs the server until SIGTERM or SIGINT. Returns after every worker has flushed its shard.
pub fn serve(config: Config, config_path: Option<&std::path::Path>) -> Result<()> {
    // Signals go to the main thread only: block them before any thread exists (threads inherit
    // the mask), or a second SIGTERM could reach a thread with the default action and kill the
    // process mid-flush.
    let sigset = crate::net::signals::block().context("blocking the shutdown signals")?;
    let config = Arc::new(config);
    spool::disk::create_dir_durably(&spool::disk::RealDisk, &config.spool_dir)
        .with_context(|| format!("cannot create spool_dir {}", config.spool_dir.display()))?;
    let _lock = spool::lock(&config.spool_dir)?;
    // Every shard on disk needs a worker, or its acknowledged mail would never be delivered
    // (e.g. after moving from 8 cores to 4 with `threads = 0`).
    let on_disk = spool::recovery::list_shards(&config.spool_dir)?
        .into_iter()
        .max()
        .map_or(0, |m| usize::from(m) + 1);
    let config = if on_disk > config.threads {
        tracing::warn!(
            configured = config.threads,
            shards = on_disk,
            "the spool has more shards than worker threads; starting one worker per shard"
        );
        let mut c = (*config).clone();
        c.threads = on_disk;
        Arc::new(c)
    } else {
        config
    };
    if config.spool.durability == Durability::None {
        tracing::warn!(
            "spool.durability = \"none\": a 250 does NOT mean the message is on disk; benchmarks only"
        );
    }

    let shared = Arc::new(Shared::build(Arc::clone(&config))?);
    // Limits, throttles, suspensions and suppressions shared with the other nodes.
    let cluster = match &config.cluster {
        None => None,
        Some(settings) => Some(crate::cluster::Cluster::start(
            settings.clone(),
            crate::cluster::Parts {
                sites: Arc::clone(&shared.sites),
                suppressions: Arc::clone(&shared.suppressions),
                suspensions: Arc::clone(&shared.suspensions),
                counters: [
                    ("connections", shared.connection_rate.counter()),
                    ("messages", shared.message_rate.counter()),
                    ("auth_failures", shared.auth.failure_counter()),
                ]
                .into_iter()
                .filter_map(|(name, c)| Some((name, c?)))
                .collect(),
            },
        )?),
    };
    // Webhook posters read the event log from their saved offsets, on threads of their own.
    let webhook_stats = crate::webhook::start(
        &config.webhooks,
        &config.delivery.event_log,
        &config.spool_dir.join("webhooks"),
        &shared.verify_tls,
    )
    .context("cannot start the webhooks")?;

    // The HTTP API comes up before recovery, so that /healthz answers and /readyz says 503
    // while a large spool is read; each worker's control channel exists from now on (requests
    // wait until the worker runs).
    let (control_senders, mut control_receivers): (Vec<_>, Vec<_>) = (0..config.threads)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let reload_control = crate::control::ControlHandle::new(control_senders.clone());
    let _ = shared.peers.set(control_senders.clone());
    let ready_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = match config.http {
        Some(addr) => {
            let api = crate::http::Api {
                metrics: shared.metrics.clone(),
                ready: Arc::clone(&ready_flag),
                control: crate::control::ControlHandle::new(control_senders.clone()),
                auth: shared.auth.clone(),
                hostname: config.hostname.clone(),
                max_message_size: config.limits.max_message_size,
                suspensions: Arc::clone(&shared.suspensions),
                suppressions: Arc::clone(&shared.suppressions),
                tokens: config.api_tokens.clone(),
                webhooks: config
                    .webhooks
                    .iter()
                    .map(|w| w.url.clone())
                    .zip(webhook_stats.iter().cloned())
                    .collect(),
                sites: Arc::clone(&shared.sites),
                autoconfig: config.autoconfig.clone(),
                cluster: cluster.clone(),
            };
            let h = crate::http::HttpServer::start(addr, api)?;
            // `ringmta queue ...` finds the API here when the configured port is 0.
            let _ = std::fs::write(config.spool_dir.join("http.addr"), h.addr.to_string());
            println!("ringmta http: {} (ready once recovery is done)", h.addr);
            if config.api_tokens.is_empty() {
                tracing::warn!(
                    "no [[api_tokens]]: the admin API (queue, suspensions, suppressions) answers loopback clients only, without credentials"
                );
            }
            tracing::info!(addr = %h.addr, "http listening");
            Some(h)
        }
        None => None,
    };

    // Recover every shard before accepting anything.
    let now_ms = unix_ms(SystemTime::now());
    let mut shards = Vec::new();
    for i in 0..config.threads {
        let cfg = ShardConfig {
            dir: config.spool_dir.clone(),
            shard: i as u8,
            segment_size: config.spool.segment_size,
            max_bytes: config.spool.max_size,
            durability: config.spool.durability,
        };
        let (mut shard, report) =
            Shard::open(cfg, now_ms).with_context(|| format!("cannot open spool shard {i}"))?;
        if let Some(c) = &cluster {
            shard.set_node(c.node_id());
        }
        tracing::info!(shard = i, "{report}");
        shards.push(shard);
    }

    let bound = bind_all(&config.listeners, config.threads)?;
    let mut ready = String::from("ringmta ready:");
    for b in &bound {
        let name = match b.role {
            PortRole::Relay => "smtp",
            PortRole::Submission => "submission",
            PortRole::Submissions => "submissions",
        };
        ready.push_str(&format!(" {name}={}", b.addr));
        tracing::info!(role = name, addr = %b.addr, "listening");
    }

    let mut per_worker: Vec<Vec<(std::net::TcpListener, PortRole)>> =
        (0..config.threads).map(|_| Vec::new()).collect();
    for b in bound {
        for (i, s) in b.sockets.into_iter().enumerate() {
            per_worker[i].push((s, b.role));
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut handles = Vec::new();
    for (i, ((listeners, shard), control)) in per_worker
        .into_iter()
        .zip(shards)
        .zip(control_receivers.drain(..))
        .enumerate()
    {
        let spec = WorkerSpec {
            index: i as u8,
            listeners,
            shard,
            control,
        };
        let shared = Arc::clone(&shared);
        let rx = shutdown_rx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("ringmta-w{i}"))
                .spawn(move || worker::run(spec, shared, rx))
                .context("cannot start worker thread")?,
        );
    }
    if let Some(h) = &http {
        ready.push_str(&format!(" http={}", h.addr));
    }
    // Recovery is done and every worker runs: ready.
    ready_flag.store(true, std::sync::atomic::Ordering::Release);
    println!("{ready}");
    tracing::info!(threads = config.threads, hostname = %config.hostname, "ringmta started");

    loop {
        let sig = match crate::net::signals::wait(&sigset) {
            Ok(sig) => sig,
            // sigwait only fails on an invalid set; shutting down beats spinning on it.
            Err(e) => {
                tracing::error!(error = %e, "waiting for signals failed; shutting down");
                libc::SIGTERM
            }
        };
        if sig == libc::SIGHUP {
            match config_path {
                None => tracing::warn!(
                    "SIGHUP: no configuration file to reload (started without --config)"
                ),
                Some(path) => match reload(path, &config, &shared.auth, &reload_control) {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(
                        config = %path.display(),
                        "reload rejected, the running configuration stays: {e:#}"
                    ),
                },
            }
            continue;
        }
        tracing::info!(
            signal = sig,
            "shutting down: no new connections, finishing transactions in flight"
        );
        break;
    }
    ready_flag.store(false, std::sync::atomic::Ordering::Release);
    let _ = shutdown_tx.send(true);
    for h in handles {
        let _ = h.join();
    }
    if let Some(h) = http {
        h.stop();
    }
    if let Some(c) = &cluster {
        c.stop();
    }
    tracing::info!("ringmta stopped");
    Ok(())
}

/// SIGHUP: reads the file again and, if all of it is valid, applies users, routes, DKIM keys,
/// scanners and bounce rules to the running server without dropping any connection. Settings
/// that need new sockets, threads or a new spool are reported and left as they are.
fn reload(
    path: &std::path::Path,
    current: &Config,
    auth: &AuthService,
    control: &crate::control::ControlHandle,
) -> Result<()> {
    let new = crate::config::load(path)?;
    if new.listeners != current.listeners
        || new.http != current.http
        || new.spool_dir != current.spool_dir
        || new.tls != current.tls
        || new.spool != current.spool
    {
        tracing::warn!(
            "listeners, http, spool and tls settings changed: they apply at the next restart"
        );
    }
    let users = users_of(&new)?;
    let classifier = Arc::new(build_classifier(&new)?);
    let content =
        Arc::new(crate::content::ContentChecks::new(&new, &users).context("content checks")?);
    control
        .reload(|| crate::control::Reloaded {
            content: Arc::clone(&content),
            classifier: Arc::clone(&classifier),
            delivery: new.delivery.clone(),
        })
        .map_err(|e| anyhow::anyhow!(e))?;
    auth.reload_users(&users);
    Ok(())
}
