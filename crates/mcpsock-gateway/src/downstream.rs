//! The downstream sessions: what each client asked for (its log level, its
//! resource subscriptions) and how to reach it with notifications that no
//! request of its own caused (list changes, resource updates).

// Logging, sampling and roots are deprecated by SEP-2577 (2026-07-28), but
// clients and servers of the earlier revisions use them, and a gateway
// passes through what both sides speak.
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rmcp::model::{LoggingLevel, RequestId, ServerNotification};
use rmcp::service::{SubscriptionSendError, SubscriptionSink};
use rmcp::{Peer, RoleServer};

use crate::isolation::Dedicated;

/// One downstream session (one handler clone of rmcp's HTTP service).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u64,
    /// The client, known from its first request.
    peer: OnceLock<Peer<RoleServer>>,
    state: Mutex<SessionState>,
    /// Its own connections to `isolation: per-session` servers.
    pub(crate) dedicated: Dedicated,
}

#[derive(Debug, Default)]
struct SessionState {
    /// Set by `logging/setLevel`; until then the upstream's own choice passes.
    log_level: Option<LoggingLevel>,
    subscriptions: BTreeSet<String>,
}

impl Session {
    pub(crate) fn remember_peer(&self, peer: &Peer<RoleServer>) {
        let _ = self.peer.set(peer.clone());
    }

    pub(crate) fn peer(&self) -> Option<&Peer<RoleServer>> {
        self.peer.get()
    }

    pub(crate) fn set_log_level(&self, level: LoggingLevel) {
        lock(&self.state).log_level = Some(level);
    }

    pub(crate) fn log_level(&self) -> Option<LoggingLevel> {
        lock(&self.state).log_level
    }

    /// Whether a message at `level` is one this session asked for.
    pub(crate) fn wants_log(&self, level: LoggingLevel) -> bool {
        self.log_level().is_none_or(|threshold| severity(level) >= severity(threshold))
    }

    pub(crate) fn subscribe(&self, uri: &str) {
        lock(&self.state).subscriptions.insert(uri.to_string());
    }

    /// Returns whether the session was subscribed.
    pub(crate) fn unsubscribe(&self, uri: &str) -> bool {
        lock(&self.state).subscriptions.remove(uri)
    }

    pub(crate) fn is_subscribed(&self, uri: &str) -> bool {
        lock(&self.state).subscriptions.contains(uri)
    }

    /// Sends a notification the session did not cause by a request; a
    /// session whose client is gone is skipped.
    pub(crate) async fn notify(&self, notification: ServerNotification) {
        if let Some(peer) = self.peer()
            && let Err(error) = peer.send_notification(notification).await
        {
            tracing::debug!(session = self.id, %error, "could not notify a downstream session");
        }
    }
}

/// Every live downstream session. Sessions are held weakly: a session ends
/// when rmcp drops its handler.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    live: Mutex<Vec<Weak<Session>>>,
    /// Open `subscriptions/listen` streams of 2026-07-28 clients.
    listeners: Mutex<Vec<SubscriptionSink>>,
}

impl Sessions {
    pub(crate) fn open(&self) -> Arc<Session> {
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer: OnceLock::new(),
            state: Mutex::new(SessionState::default()),
            dedicated: Dedicated::default(),
        });
        let mut live = lock(&self.live);
        live.retain(|session| session.strong_count() > 0);
        live.push(Arc::downgrade(&session));
        session
    }

    /// The sessions of a per-session upstream: just its own, so what that
    /// upstream announces reaches no other client.
    pub(crate) fn only(session: &Arc<Session>) -> Arc<Sessions> {
        let sessions = Sessions::default();
        lock(&sessions.live).push(Arc::downgrade(session));
        Arc::new(sessions)
    }

    pub(crate) fn live(&self) -> Vec<Arc<Session>> {
        lock(&self.live).iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Session>> {
        self.live().into_iter().find(|session| session.id == id)
    }

    /// The most verbose level any live session asked for: what upstreams
    /// are set to, so that every session can be served from one stream.
    pub(crate) fn most_verbose_level(&self) -> Option<LoggingLevel> {
        self.live().iter().filter_map(|session| session.log_level()).min_by_key(|level| severity(*level))
    }

    /// Whether any live session or open listen stream is subscribed to `uri`.
    pub(crate) fn anyone_subscribed(&self, uri: &str) -> bool {
        self.live().iter().any(|session| session.is_subscribed(uri))
            || lock(&self.listeners).iter().any(|sink| {
                sink.accepted()
                    .resource_subscriptions
                    .as_ref()
                    .is_some_and(|uris| uris.iter().any(|u| u == uri))
            })
    }

    pub(crate) fn add_listener(&self, sink: SubscriptionSink) {
        lock(&self.listeners).push(sink);
    }

    pub(crate) fn remove_listener(&self, id: &RequestId) {
        lock(&self.listeners).retain(|sink| sink.id() != id);
    }

    /// Tells every session (earlier revisions: on its standalone stream;
    /// 2026-07-28: on each listen stream whose filter asked for it) about a
    /// change no request of its own caused. A resource update goes only to
    /// those subscribed to the resource.
    pub(crate) async fn broadcast(&self, notification: ServerNotification) {
        let updated = match &notification {
            ServerNotification::ResourceUpdatedNotification(update) => Some(update.params.uri.clone()),
            _ => None,
        };
        for session in self.live() {
            if updated.as_deref().is_none_or(|uri| session.is_subscribed(uri)) {
                session.notify(notification.clone()).await;
            }
        }
        let listeners = lock(&self.listeners).clone();
        for sink in listeners {
            match sink.send(notification.clone()).await {
                Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                Err(error) => {
                    tracing::debug!(%error, "a listen stream is gone");
                    self.remove_listener(sink.id());
                }
            }
        }
    }
}

/// RFC 5424 order, least severe first.
pub(crate) fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_subscriptions_are_per_session() {
        let sessions = Sessions::default();
        let quiet = sessions.open();
        let chatty = sessions.open();
        assert!(quiet.wants_log(LoggingLevel::Debug), "no level set: everything passes");
        quiet.set_log_level(LoggingLevel::Error);
        chatty.set_log_level(LoggingLevel::Info);
        assert!(!quiet.wants_log(LoggingLevel::Warning));
        assert!(quiet.wants_log(LoggingLevel::Critical));
        assert!(chatty.wants_log(LoggingLevel::Warning));
        assert_eq!(sessions.most_verbose_level(), Some(LoggingLevel::Info));
        chatty.subscribe("test://a");
        assert!(sessions.anyone_subscribed("test://a"));
        assert!(!quiet.is_subscribed("test://a"));
        drop(chatty);
        assert!(!sessions.anyone_subscribed("test://a"), "an ended session holds no subscription");
        assert_eq!(sessions.most_verbose_level(), Some(LoggingLevel::Error));
        assert_eq!(sessions.live().len(), 1);
    }
}
