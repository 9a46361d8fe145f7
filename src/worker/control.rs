//! The worker side of control requests: answers the operator HTTP thread's requests about this
//! worker's shard and delivery (see [`crate::control`] for the requests and the handle).

use std::rc::Rc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::control::{ControlRequest, MessageInfo, QueueSummary, RecipientInfo, Reloaded};
use crate::delivery::Cancel;
use crate::ids::QueueId;
use crate::queue::shape::{By, Shape};
use crate::time::unix_ms;

use super::Core;

/// The worker side: answers requests until the channel closes.
pub async fn serve(core: Rc<Core>, mut rx: mpsc::UnboundedReceiver<ControlRequest>) {
    while let Some(req) = rx.recv().await {
        match req {
            ControlRequest::Feedback { id, notices, reply } => {
                let n = core
                    .delivery
                    .borrow()
                    .as_ref()
                    .map_or(0, |d| d.take_feedback(id, &notices));
                let _ = reply.send(n);
            }
            ControlRequest::Inject { transaction, reply } => {
                let core = Rc::clone(&core);
                // Commits wait for fdatasync: run them as their own task so other requests
                // are not held behind them.
                tokio_uring::spawn(async move {
                    let result = core.commit(*transaction, SystemTime::now()).await;
                    let _ = reply.send(result);
                });
            }
            ControlRequest::Message { id, reply } => {
                let _ = reply.send(message_info(&core, id));
            }
            ControlRequest::Queue { reply } => {
                let _ = reply.send(summary(&core));
            }
            ControlRequest::Shape { by, now_ms, reply } => {
                let _ = reply.send(shape(&core, by, now_ms));
            }
            ControlRequest::Flush { domain, reply } => {
                let n = core
                    .delivery
                    .borrow()
                    .as_ref()
                    .map(|d| d.flush(domain.as_deref()))
                    .unwrap_or(0);
                let _ = reply.send(n);
            }
            ControlRequest::Delete { id, reply } => {
                let _ = reply.send(delete(&core, id));
            }
            ControlRequest::Reload { settings, reply } => {
                let _ = reply.send(apply_reload(&core, *settings));
            }
            ControlRequest::Bounce { id, reply } => {
                let n = core
                    .delivery
                    .borrow()
                    .as_ref()
                    .and_then(|d| d.cancel(id, Cancel::Bounce));
                let _ = reply.send(n);
            }
            ControlRequest::BounceMatching { target, reply } => {
                let n = core
                    .delivery
                    .borrow()
                    .as_ref()
                    .map_or(0, |d| d.cancel_matching(&target, Cancel::Bounce));
                let _ = reply.send(n);
            }
        }
    }
}

fn apply_reload(core: &Core, r: Reloaded) -> Result<(), String> {
    let d = &r.delivery;
    let router = crate::delivery::route::Router::new(d.routes.clone(), &d.nameservers, d.smtp_port)
        .map_err(|e| format!("cannot build the dns resolver: {e}"))?;
    *core.content.borrow_mut() = r.content;
    if let Some(delivery) = core.delivery.borrow().as_ref() {
        delivery.reload(router, r.classifier, d.route_tls.clone());
    }
    Ok(())
}

fn message_info(core: &Core, id: QueueId) -> Option<MessageInfo> {
    let shard = core.shard.borrow();
    let st = shard.state(id)?;
    let view = shard.message(id)?;
    let recipients = st
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let last = r.last_status.and_then(|at| shard.status_record(at));
            RecipientInfo {
                address: view
                    .meta
                    .recipients
                    .get(i)
                    .map(|m| m.address.as_str().to_owned())
                    .unwrap_or_default(),
                state: r.status().name(),
                attempts: r.attempts,
                next_attempt_ms: (!r.is_final()).then_some(r.next_attempt_ms),
                last_reply: last
                    .map(|l| l.reply.as_str().to_owned())
                    .filter(|s| !s.is_empty()),
                category: last
                    .map(|l| l.category.as_str().to_owned())
                    .filter(|s| !s.is_empty()),
            }
        })
        .collect();
    Some(MessageInfo {
        id: id.to_string(),
        from: view.meta.reverse_path.as_str().to_owned(),
        received_at_ms: st.received_at_ms,
        size: view.body.len() as u64,
        recipients,
    })
}

fn summary(core: &Core) -> QueueSummary {
    let shard = core.shard.borrow();
    let mut s = QueueSummary::default();
    for id in shard.messages() {
        let (Some(st), Some(view)) = (shard.state(id), shard.message(id)) else {
            continue;
        };
        s.messages += 1;
        for (i, r) in st.recipients.iter().enumerate() {
            *s.recipients.entry(r.status().name()).or_default() += 1;
            if !r.is_final()
                && let Some(m) = view.meta.recipients.get(i)
            {
                *s.destinations
                    .entry(crate::delivery::domain_of(m.address.as_str()))
                    .or_default() += 1;
            }
        }
    }
    s
}

/// This core's pending recipients by `by` and age.
fn shape(core: &Core, by: By, now_ms: u64) -> Shape {
    let shard = core.shard.borrow();
    let mut shape = Shape::default();
    for id in shard.messages() {
        let (Some(st), Some(view)) = (shard.state(id), shard.message(id)) else {
            continue;
        };
        let meta = &view.meta;
        let pending = (st.recipients.iter().zip(meta.recipients.iter()))
            .filter(|(r, _)| !r.is_final())
            .map(|(r, m)| (m.address.as_str(), r.status().name()));
        shape.add_message(
            by,
            now_ms.saturating_sub(meta.received_at_ms.to_native()),
            (
                meta.reverse_path.as_str(),
                meta.auth_user.as_ref().map(|u| u.as_str()),
            ),
            pending,
        );
    }
    shape
}

fn delete(core: &Core, id: QueueId) -> Option<u64> {
    if let Some(d) = core.delivery.borrow().as_ref() {
        return d.cancel(id, Cancel::Delete);
    }
    let now = unix_ms(SystemTime::now());
    let marked = core.shard.borrow_mut().mark_deleted(id, now)?;
    Some(marked.unwrap_or_else(|e| {
        tracing::error!(%id, error = %e, "cannot record the deletion");
        0
    }))
}
