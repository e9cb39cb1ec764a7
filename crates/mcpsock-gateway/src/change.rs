//! Changing the set of upstreams while the gateway serves: adding, removing
//! and restarting them without losing a request.
//!
//! A replaced upstream is swapped out only after its successor has started,
//! so new requests never wait; the old one keeps serving the requests that
//! already hold a lease on it, and is stopped when they are done or the
//! grace period ends, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::ServerNotification;

use crate::UpstreamSpec;
use crate::handler::Gateway;
use crate::upstream::Upstream;

/// What a change did, by upstream name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed upstreams, started again with their new spec.
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// Replaced upstreams whose requests were still running when the grace
    /// period ended (those requests were cut off).
    pub not_drained: Vec<String>,
}

impl Gateway {
    /// Makes the running upstreams match `specs`: starts the new ones,
    /// stops the ones no longer listed, and restarts those whose spec
    /// changed. Upstreams whose spec is unchanged are not touched. Changes
    /// are serialized; requests in flight on a replaced upstream get up to
    /// `grace` to finish.
    pub async fn apply(&self, specs: Vec<UpstreamSpec>, grace: Duration) -> ChangeReport {
        self.change(specs, &[], grace).await
    }

    /// Restarts one upstream with its current spec (a new process; requests
    /// in flight get up to `grace`). `false` when no upstream has that name.
    pub async fn restart(&self, name: &str, grace: Duration) -> bool {
        let specs: Vec<UpstreamSpec> =
            self.upstreams().iter().map(|upstream| upstream.spec().clone()).collect();
        if !specs.iter().any(|spec| spec.name == name) {
            return false;
        }
        self.change(specs, &[name], grace).await;
        true
    }

    /// The specs of the current upstreams, in name order.
    pub fn specs(&self) -> Vec<UpstreamSpec> {
        self.upstreams().iter().map(|upstream| upstream.spec().clone()).collect()
    }

    /// Requests still running on replaced upstreams, while any is draining.
    pub fn draining(&self) -> Option<usize> {
        let draining = self.inner.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if draining.is_empty() {
            return None;
        }
        Some(draining.iter().map(|upstream| upstream.in_flight()).sum())
    }

    async fn change(
        &self,
        specs: Vec<UpstreamSpec>,
        force_restart: &[&str],
        grace: Duration,
    ) -> ChangeReport {
        let _serial = self.inner.changing.lock().await;
        let current: BTreeMap<String, Arc<Upstream>> =
            self.upstreams().iter().map(|upstream| (upstream.name.clone(), upstream.clone())).collect();
        let wanted: BTreeMap<String, UpstreamSpec> =
            specs.into_iter().map(|spec| (spec.name.clone(), spec)).collect();
        let mut report = ChangeReport::default();
        let mut to_start = Vec::new();
        for (name, spec) in &wanted {
            match current.get(name) {
                None => {
                    report.added.push(name.clone());
                    to_start.push(spec.clone());
                }
                Some(upstream) if upstream.spec() != spec || force_restart.contains(&name.as_str()) => {
                    report.restarted.push(name.clone());
                    to_start.push(spec.clone());
                }
                Some(_) => report.unchanged.push(name.clone()),
            }
        }
        report.removed = current.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        if report.added.is_empty() && report.removed.is_empty() && report.restarted.is_empty() {
            return report;
        }
        let options = &self.inner.options;
        let timing = options.timing();
        let started =
            futures::future::join_all(to_start.iter().map(|spec| {
                Upstream::start(spec, timing, self.inner.sessions.clone(), options.events.clone())
            }))
            .await;
        let mut started: BTreeMap<String, Arc<Upstream>> =
            started.into_iter().map(|upstream| (upstream.name.clone(), upstream)).collect();
        let next: Vec<Arc<Upstream>> = wanted
            .keys()
            .map(|name| match started.remove(name) {
                Some(upstream) => upstream,
                None => current[name].clone(),
            })
            .collect();
        let templates: Vec<Arc<Upstream>> =
            report.removed.iter().chain(&report.restarted).map(|name| current[name].clone()).collect();
        // The sessions' own connections to a replaced server are replaced
        // with it: drained and stopped here, started anew on next use.
        let sessions = self.inner.sessions.live();
        let dedicated: Vec<Arc<Upstream>> = templates
            .iter()
            .flat_map(|template| {
                sessions.iter().flat_map(|session| session.dedicated.take_made_from(template))
            })
            .collect();
        drop(sessions);
        let replaced: Vec<Arc<Upstream>> = templates.into_iter().chain(dedicated).collect();
        {
            let mut draining = self.inner.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            draining.extend(replaced.iter().cloned());
        }
        // From here on no new request can lease a replaced upstream.
        *self.inner.upstreams.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        // The offered names follow the new set on their next use; clients
        // learn that the lists changed now.
        for notification in [
            ServerNotification::ToolListChangedNotification(Default::default()),
            ServerNotification::PromptListChangedNotification(Default::default()),
            ServerNotification::ResourceListChangedNotification(Default::default()),
        ] {
            self.inner.sessions.broadcast(notification).await;
        }
        let drained = futures::future::join_all(replaced.iter().map(|upstream| async move {
            let drained = upstream.drain(grace).await;
            if !drained {
                tracing::warn!(
                    upstream = %upstream.name,
                    requests = upstream.in_flight(),
                    "requests still running after the {grace:?} grace period are cut off"
                );
            }
            upstream.stop().await;
            (upstream.name.clone(), drained)
        }))
        .await;
        report.not_drained =
            drained.into_iter().filter(|(_, drained)| !drained).map(|(name, _)| name).collect();
        report.not_drained.dedup();
        self.inner
            .draining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|upstream| !replaced.iter().any(|old| Arc::ptr_eq(old, upstream)));
        report
    }
}
