//! Controllers: level-triggered control loops that run only on the raft leader and use the API
//! through [`ferry_api::client::Api`] (in-process, never the store). Each has a pure decision
//! function, unit-tested, and a small executor that applies its actions. [`Turns`] paces them
//! all; they read whole kinds from shared informer caches ([`cache::Cached`]).

pub mod backoff;
pub mod cache;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
#[cfg(test)]
pub(crate) mod fake;
pub mod gc;
pub mod history;
pub mod job;
pub mod loadbalancer;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod taintmanager;
pub mod volumebinding;

use std::collections::HashMap;
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

/// Records an Event about `obj` (kind `kind`) from `component`: what every control loop uses
/// for the decisions a user sees in `ferry describe`. Best effort: a failed write is logged.
pub(crate) async fn record_event<A: ferry_api::client::Api>(
    api: &A,
    kind: &str,
    obj: &Value,
    component: &str,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let ns = str_at(obj, "/metadata/namespace");
    let name = str_at(obj, "/metadata/name");
    // Events about cluster-scoped objects live in `default`, as in Kubernetes.
    let event_ns = if ns.is_empty() { "default" } else { ns };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let api_version = ferry_api::kinds::lookup_kind(kind)
        .map(|k| k.api_version)
        .unwrap_or("v1");
    let ev = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": event_ns},
        "involvedObject": {"kind": kind, "namespace": ns, "name": name,
                           "uid": str_at(obj, "/metadata/uid"), "apiVersion": api_version},
        "reason": reason, "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Err(err) = api.create("Event", event_ns, &ev).await {
        tracing::debug!(object = name, "recording event: {err}");
    }
}

/// Objects by namespace (what a namespaced owner can own), in cache order.
pub(crate) fn by_namespace(objs: &[Arc<Value>]) -> HashMap<&str, Vec<&Value>> {
    let mut by_ns: HashMap<&str, Vec<&Value>> = HashMap::new();
    for o in objs {
        by_ns
            .entry(str_at(o, "/metadata/namespace"))
            .or_default()
            .push(o);
    }
    by_ns
}

/// Writes the fields of `status` over `obj`'s status (other fields kept), only when one of
/// them differs.
pub(crate) async fn update_status_fields<A: ferry_api::client::Api>(
    api: &A,
    kind: &str,
    obj: &Value,
    status: &Value,
) -> Result<(), ferry_api::client::ClientError> {
    let current = obj.get("status").cloned().unwrap_or(Value::Null);
    let fields = status.as_object().into_iter().flatten();
    if !fields.clone().any(|(k, v)| current[k] != *v) {
        return Ok(());
    }
    let mut merged = current.as_object().cloned().unwrap_or_default();
    for (k, v) in fields {
        merged.insert(k.clone(), v.clone());
    }
    let mut updated = obj.clone();
    updated["status"] = Value::Object(merged);
    api.update_status(kind, &updated).await.map(drop)
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
    /// A requeue due before the next idle pass.
    due: Option<Duration>,
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
            due: None,
        }
    }

    pub async fn next(&mut self) -> bool {
        loop {
            if !std::mem::take(&mut self.first) {
                let idle = self
                    .due
                    .take()
                    .map_or(self.pace.idle, |d| d.min(self.pace.idle));
                tokio::select! {
                    r = self.changes.changed() => if r.is_err() { return false },
                    _ = tokio::time::sleep(idle) => {}
                }
                tokio::time::sleep(self.pace.throttle).await;
            }
            if self.node.is_leader() {
                return true;
            }
        }
    }

    /// Asks for the next pass within `due` (an object's back-off ending), changes or not.
    pub fn requeue_after(&mut self, due: Option<Duration>) {
        self.due = due;
    }

    /// Reports a failed pass; the next turn retries.
    pub fn failed(&self, e: impl std::fmt::Display) {
        tracing::debug!(controller = self.name, "pass failed: {e}");
    }
}

/// Runs `pass` on the leader whenever the store changes, paced by `pace`, until the member
/// stops: the loop of every controller whose pass needs nothing but the API.
pub(crate) async fn run_passes<F, Fut, T, E>(
    name: &'static str,
    node: std::sync::Arc<crate::node::Node>,
    pace: Pace,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut turns = Turns::new(name, node, pace);
    while turns.next().await {
        if let Err(e) = pass().await {
            turns.failed(e);
        }
    }
}

/// What the leader's control loops need to know.
pub struct Settings {
    pub pod_cidrs: crate::nodeipam::CidrPlan,
    pub node_monitor_grace: Duration,
    pub lb_pool: Option<loadbalancer::Pool>,
    /// Which control loops run, kube-controller-manager style: `*` for all, a name to add,
    /// `-name` to leave one out (see [`CONTROLLERS`]).
    pub enabled: Vec<String>,
}

/// The control loops a member runs, by name (`--controllers`).
pub const CONTROLLERS: &[&str] = &[
    "scheduler",
    "nodeipam",
    "replicaset",
    "deployment",
    "endpointslice",
    "nodelifecycle",
    "taint-eviction",
    "loadbalancer",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "job",
    "cronjob",
    // Workload sets and storage.
    "daemonset",
    "statefulset",
    "volumebinding",
];

/// Whether `name` runs under `--controllers LIST`.
pub fn is_enabled(list: &[String], name: &str) -> bool {
    if list.iter().any(|c| c.strip_prefix('-') == Some(name)) {
        return false;
    }
    list.is_empty() || list.iter().any(|c| c == "*" || c == name)
}

/// Checks a `--controllers` list; the error names the unknown entry.
pub fn check_list(list: &[String]) -> Result<(), String> {
    for c in list {
        let name = c.strip_prefix('-').unwrap_or(c);
        if name != "*" && !CONTROLLERS.contains(&name) {
            return Err(format!(
                "unknown controller {name:?}; known: {}",
                CONTROLLERS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Starts the enabled control loops of a member (each acts only while the member leads).
pub fn spawn_all(api: &ApiServer, settings: Settings) {
    let node = api.node().clone();
    // One set of informer caches for every loop (see [`cache`]).
    let cached = cache::Cached::new(LocalApi(api.clone()), node.clone());
    let local = || cached.clone();
    let on = |name: &str| is_enabled(&settings.enabled, name);
    if on("scheduler") {
        tokio::spawn(crate::scheduler::run(local(), node.clone()));
    }
    if on("nodeipam") {
        tokio::spawn(crate::nodeipam::run(
            local(),
            node.clone(),
            settings.pod_cidrs,
        ));
    }
    if on("replicaset") {
        tokio::spawn(replicaset::run(local(), node.clone()));
    }
    if on("deployment") {
        tokio::spawn(deployment::run(local(), node.clone()));
    }
    if on("endpointslice") {
        tokio::spawn(endpointslice::run(local(), node.clone()));
    }
    if on("nodelifecycle") {
        tokio::spawn(nodelifecycle::run(
            local(),
            node.clone(),
            settings.node_monitor_grace,
        ));
    }
    if on("taint-eviction") {
        tokio::spawn(taintmanager::run(local(), node.clone()));
    }
    if on("garbagecollector") {
        tokio::spawn(gc::run(local(), node.clone()));
    }
    if on("job") {
        tokio::spawn(job::run(local(), node.clone()));
    }
    if on("cronjob") {
        tokio::spawn(cronjob::run(local(), node.clone()));
    }
    if on("namespace") {
        tokio::spawn(namespace::run(local(), node.clone()));
    }
    // Workload sets and storage.
    if on("serviceaccount") {
        tokio::spawn(serviceaccount::run(local(), node.clone()));
    }
    if on("daemonset") {
        tokio::spawn(daemonset::run(local(), node.clone()));
    }
    if on("statefulset") {
        tokio::spawn(statefulset::run(local(), node.clone()));
    }
    if on("volumebinding") {
        tokio::spawn(volumebinding::run(local(), node.clone()));
    }
    if on("loadbalancer")
        && let Some(pool) = settings.lb_pool
    {
        tokio::spawn(loadbalancer::run(local(), node, pool));
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn controller_lists() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_enabled(&[], "deployment"));
        assert!(is_enabled(&l(&["*"]), "deployment"));
        assert!(!is_enabled(&l(&["*", "-deployment"]), "deployment"));
        assert!(is_enabled(&l(&["*", "-deployment"]), "scheduler"));
        assert!(!is_enabled(&l(&["scheduler"]), "deployment"));
        assert!(check_list(&l(&["*", "-nope"])).is_err());
        assert!(check_list(&l(&["*", "-replicaset", "scheduler"])).is_ok());
    }
}
