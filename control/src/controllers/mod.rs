//! Controllers: level-triggered control loops that run only on the raft leader and use the API
//! through [`ferry_api::client::Api`] (in-process, never the store). Each has a pure decision
//! function, unit-tested, and a small executor that applies its actions; [`run_on_leader`] is
//! [`Turns`] paces them all.

pub mod deployment;
pub mod endpointslice;
pub mod loadbalancer;
pub mod nodelifecycle;
pub mod replicaset;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::apiserver::ApiServer;
use crate::apiserver::local::LocalApi;
use crate::node::Node;

/// The string at JSON pointer `ptr`, or "".
pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// How a control loop is paced.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// A pass runs at least this often, changes or not.
    pub idle: Duration,
    /// Store changes are coalesced: at most one pass per this long.
    pub throttle: Duration,
}

/// The turns of a control loop: `while turns.next().await { pass }` runs a pass at once, then
/// after store changes (coalesced by `pace.throttle`) and at least every `pace.idle`, but only
/// while this member leads. `next` returns false when the store goes away.
pub struct Turns {
    name: &'static str,
    node: Arc<Node>,
    pace: Pace,
    changes: tokio::sync::watch::Receiver<u64>,
    first: bool,
}

impl Turns {
    pub fn new(name: &'static str, node: Arc<Node>, pace: Pace) -> Self {
        let changes = node.sm.subscribe();
        Turns {
            name,
            node,
            pace,
            changes,
            first: true,
        }
    }

    pub async fn next(&mut self) -> bool {
        loop {
            if !std::mem::take(&mut self.first) {
                tokio::select! {
                    r = self.changes.changed() => if r.is_err() { return false },
                    _ = tokio::time::sleep(self.pace.idle) => {}
                }
                tokio::time::sleep(self.pace.throttle).await;
            }
            if self.node.is_leader() {
                return true;
            }
        }
    }

    /// Reports a failed pass; the next turn retries.
    pub fn failed(&self, e: impl std::fmt::Display) {
        tracing::debug!(controller = self.name, "pass failed: {e}");
    }
}

/// What the leader's control loops need to know.
pub struct Settings {
    pub pod_cidrs: crate::nodeipam::CidrPlan,
    pub node_monitor_grace: Duration,
    pub lb_pool: Option<loadbalancer::Pool>,
}

/// Starts every control loop of a member (each acts only while the member leads).
pub fn spawn_all(api: &ApiServer, settings: Settings) {
    let node = api.node().clone();
    let local = || LocalApi(api.clone());
    tokio::spawn(crate::scheduler::run(local(), node.clone()));
    tokio::spawn(crate::nodeipam::run(
        local(),
        node.clone(),
        settings.pod_cidrs,
    ));
    tokio::spawn(replicaset::run(local(), node.clone()));
    tokio::spawn(deployment::run(local(), node.clone()));
    tokio::spawn(endpointslice::run(local(), node.clone()));
    tokio::spawn(nodelifecycle::run(
        local(),
        node.clone(),
        settings.node_monitor_grace,
    ));
    if let Some(pool) = settings.lb_pool {
        tokio::spawn(loadbalancer::run(local(), node, pool));
    }
}
