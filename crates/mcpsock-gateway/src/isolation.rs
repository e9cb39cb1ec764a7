//! Per-session upstreams (`isolation: "per-session"`).
//!
//! An upstream whose state must not be shared between clients (a browser, a
//! shell, a database transaction) gets a connection of its own for every
//! downstream session that uses it: its own child process for a stdio
//! server, its own MCP session for a `url` one. The shared connection of such
//! a server stays up only to tell the catalog, so a new session's
//! `tools/list` is answered without starting anything; a session's own
//! connection is started at its first request to that server, since most
//! sessions list everything and use little of it. It is stopped when the
//! session ends (rmcp drops the session's handler: `DELETE`, expiry,
//! shutdown), when it served no request for `idle_timeout`, and when a reload
//! replaces the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::downstream::{Session, Sessions};
use crate::upstream::{EventSender, InstanceReport, Lease, Timing, Upstream};

/// One session's connection to one per-session server.
#[derive(Debug)]
struct Slot {
    /// The shared upstream it was made from: a reload that replaces that
    /// one replaces this connection too.
    template: Weak<Upstream>,
    upstream: OnceCell<Arc<Upstream>>,
}

/// The per-session connections of one downstream session, by server name.
#[derive(Debug, Default)]
pub(crate) struct Dedicated {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Dedicated {
    /// A lease on this session's connection to `template`'s server, started
    /// now when the session has none yet (or only one of a replaced or
    /// failed server).
    pub(crate) async fn lease(
        &self,
        session: &Arc<Session>,
        template: &Arc<Upstream>,
        idle_timeout: Duration,
        timing: Timing,
    ) -> Lease {
        let slot = {
            let mut slots = lock(&self.slots);
            let current = slots.get(&template.name).filter(|slot| {
                slot.template.upgrade().is_some_and(|made_from| Arc::ptr_eq(&made_from, template))
                    && slot.upstream.get().is_none_or(|upstream| !upstream.is_failed())
            });
            let reusable = match current {
                Some(slot) => match slot.upstream.get() {
                    // Leased under the lock, so the idle reaper (which
                    // removes a slot under the same lock, and only without
                    // leases) cannot stop it underneath this request.
                    Some(upstream) => return upstream.lease(),
                    None => Some(slot.clone()),
                },
                None => None,
            };
            match reusable {
                Some(slot) => slot,
                None => {
                    let slot =
                        Arc::new(Slot { template: Arc::downgrade(template), upstream: OnceCell::new() });
                    if let Some(old) = slots.insert(template.name.clone(), slot.clone()) {
                        stop_later(old);
                    }
                    slot
                }
            }
        };
        let upstream = slot
            .upstream
            .get_or_init(|| async {
                let only_this_session = Sessions::only(session);
                let events: EventSender = None;
                let upstream = Upstream::start(template.spec(), timing, only_this_session, events).await;
                tracing::info!(
                    upstream = %template.name,
                    session = session.id,
                    pid = ?upstream.report().pid,
                    "per-session upstream started"
                );
                tokio::spawn(reap_when_idle(
                    Arc::downgrade(session),
                    slot.clone(),
                    upstream.clone(),
                    idle_timeout,
                ));
                upstream
            })
            .await;
        upstream.lease()
    }

    /// The running connections made from `template`.
    pub(crate) fn reports_of(&self, template: &Arc<Upstream>) -> Vec<InstanceReport> {
        lock(&self.slots)
            .values()
            .filter(|slot| slot.template.upgrade().is_some_and(|made_from| Arc::ptr_eq(&made_from, template)))
            .filter_map(|slot| slot.upstream.get())
            .map(|upstream| upstream.instance_report())
            .collect()
    }

    /// This session's running connections, for a request that goes to all
    /// of them (`logging/setLevel`).
    pub(crate) fn running(&self) -> Vec<Arc<Upstream>> {
        lock(&self.slots).values().filter_map(|slot| slot.upstream.get().cloned()).collect()
    }

    /// Removes the connections made from `template` (being replaced or
    /// removed) and returns them for the caller to drain and stop.
    pub(crate) fn take_made_from(&self, template: &Arc<Upstream>) -> Vec<Arc<Upstream>> {
        let mut slots = lock(&self.slots);
        let names: Vec<String> = slots
            .iter()
            .filter(|(_, slot)| {
                slot.template.upgrade().is_none_or(|made_from| Arc::ptr_eq(&made_from, template))
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.into_iter().filter_map(|name| slots.remove(&name)?.upstream.get().cloned()).collect()
    }

    /// Removes every connection and returns them.
    pub(crate) fn take_all(&self) -> Vec<Arc<Upstream>> {
        lock(&self.slots).drain().filter_map(|(_, slot)| slot.upstream.get().cloned()).collect()
    }
}

impl Drop for Dedicated {
    /// The session ended: its connections go with it.
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *lock(&self.slots));
        for (_, slot) in slots {
            stop_later(slot);
        }
    }
}

/// Stops a slot's connection in the background (from `Drop`, which cannot
/// wait). Without a runtime (the process is ending) there is nothing to
/// run it on, and the gateway's shutdown stops what is left.
fn stop_later(slot: Arc<Slot>) {
    let Some(upstream) = slot.upstream.get().cloned() else { return };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        tracing::info!(upstream = %upstream.name, pid = ?upstream.report().pid, "per-session upstream stopped");
        upstream.stop().await;
    });
}

/// Stops the connection once it served no request for `idle_timeout`.
async fn reap_when_idle(
    session: Weak<Session>,
    slot: Arc<Slot>,
    upstream: Arc<Upstream>,
    idle_timeout: Duration,
) {
    loop {
        // A request in flight is activity: look again one period later
        // (its lease's release counts as activity too).
        let wake = if upstream.in_flight() > 0 {
            tokio::time::Instant::now() + idle_timeout
        } else {
            tokio::time::Instant::from_std(upstream.last_active()) + idle_timeout
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = upstream.stopped() => return,
        }
        let Some(session) = session.upgrade() else { return };
        // Checked and removed under the lock that requests lease under.
        let reaped = {
            let mut slots = lock(&session.dedicated.slots);
            let idle = upstream.in_flight() == 0 && upstream.last_active().elapsed() >= idle_timeout;
            if idle && slots.get(&upstream.name).is_some_and(|current| Arc::ptr_eq(current, &slot)) {
                slots.remove(&upstream.name);
            }
            idle
        };
        if !reaped {
            continue;
        }
        tracing::info!(
            upstream = %upstream.name,
            session = session.id,
            idle_timeout_ms = idle_timeout.as_millis() as u64,
            "per-session upstream idle; stopping it"
        );
        upstream.stop().await;
        return;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
