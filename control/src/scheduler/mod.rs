//! The scheduler: places pods without a `spec.nodeName` on nodes. Runs only on the raft leader,
//! through the [`Api`] interface (never the store).
//!
//! [`decide`] is pure: filters (unschedulable, taints and tolerations, nodeSelector, required
//! node affinity, CPU / memory / pod-count fit against allocatable minus what bound pods
//! request), then scores (least-allocated plus balanced-allocation, as kube-scheduler's
//! defaults). An unschedulable pod gets `PodScheduled=False` with Kubernetes' summary
//! ("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint ...") and a
//! FailedScheduling Event, and is retried whenever the cluster changes.
//!
//! Volumes: a pod whose persistentVolumeClaim is missing, or unbound and not of the
//! `WaitForFirstConsumer` local class, waits (Kubernetes' "pod has unbound immediate
//! PersistentVolumeClaims"); a pod whose claim is bound to a volume with node affinity (a local
//! volume) gets that affinity added to its own (see `controllers::volumebinding`).

pub mod interpod;
pub mod predicates;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_api::client::{Api, ListOptions};
use futures::StreamExt;
use serde_json::{Value, json};

pub use predicates::{Fit, NodeInfo, Pick, PodRequest, decide, pick};

use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Pods this scheduler is responsible for: unbound, not terminating, default scheduler.
fn wants_scheduling(p: &Value) -> bool {
    s(p, "/spec/nodeName").is_empty()
        && s(p, "/metadata/deletionTimestamp").is_empty()
        && matches!(s(p, "/spec/schedulerName"), "" | "default-scheduler")
        && !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
}

async fn set_scheduled_condition<A: Api>(
    api: &A,
    pod: &Value,
    status: &str,
    reason: &str,
    message: &str,
) {
    let current = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"));
    if current.is_some_and(|c| c["status"] == status && c["message"] == message) {
        return;
    }
    let mut updated = pod.clone();
    let mut conditions: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "PodScheduled");
    let mut cond = json!({"type": "PodScheduled", "status": status, "lastTransitionTime": now()});
    if !reason.is_empty() {
        cond["reason"] = json!(reason);
        cond["message"] = json!(message);
    }
    conditions.push(cond);
    updated["status"]["conditions"] = Value::Array(conditions);
    if let Err(e) = api.update_status("Pod", &updated).await {
        tracing::debug!(pod = s(pod, "/metadata/name"), "updating PodScheduled: {e}");
    }
}

async fn event<A: Api>(api: &A, pod: &Value, kind: &str, reason: &str, message: &str) {
    let warning = kind == "Warning";
    crate::controllers::record_event(
        api,
        "Pod",
        pod,
        "default-scheduler",
        warning,
        reason,
        message,
    )
    .await;
}

/// Pods bound (or marked unschedulable) concurrently in a pass. The store folds concurrent
/// writes into one raft entry, so binding one pod at a time would pay a raft round (and an
/// fsync) per write; with this many in flight a pass costs a few rounds per few hundred pods.
const IN_FLIGHT: usize = 256;

/// What a pass does for one pending pod.
enum Action<'a> {
    Bind(&'a Value, String),
    Unschedulable(&'a Value, String),
}

/// Binds `pod` to `node` through `pods/binding` (resourceVersion-guarded, so a pod changed since
/// the pass read it is
/// left to the next pass and never bound twice), then sets PodScheduled and records the Event.
async fn bind<A: Api>(api: &A, pod: &Value, node: &str) -> bool {
    let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
    // One write: spec.nodeName and PodScheduled=True (the pods/binding subresource).
    match api
        .bind(ns, name, node, s(pod, "/metadata/resourceVersion"))
        .await
    {
        Ok(_) => {
            let message = format!("Successfully assigned {ns}/{name} to {node}");
            event(api, pod, "Normal", "Scheduled", &message).await;
            true
        }
        Err(e) => {
            tracing::debug!(pod = name, "binding: {e}");
            false
        }
    }
}

/// Runs an action; a successful bind returns the pod's uid and its node.
async fn execute<A: Api>(api: &A, action: Action<'_>) -> Option<(String, String)> {
    match action {
        Action::Bind(pod, node) => bind(api, pod, &node)
            .await
            .then(|| (s(pod, "/metadata/uid").to_string(), node)),
        Action::Unschedulable(pod, message) => {
            tokio::join!(
                set_scheduled_condition(api, pod, "False", "Unschedulable", &message),
                event(api, pod, "Warning", "FailedScheduling", &message),
            );
            None
        }
    }
}

/// How long a bind this scheduler made counts even if the cache has not shown it yet.
const ASSUME_FOR: Duration = Duration::from_secs(30);

/// The scheduler's state between passes: where the next sampled node search starts and the
/// binds not yet seen in the cache.
#[derive(Default)]
pub struct Scheduler {
    next_start: usize,
    /// Pod uid -> (node, when bound): binds this scheduler made that the pod cache may not show
    /// yet; they count as bound, so a pod is never placed twice nor its node overcommitted.
    assumed: HashMap<String, (String, Instant)>,
    /// Namespace labels for `namespaceSelector`s in pod (anti-)affinity, read each pass that
    /// needs the rules.
    namespaces: interpod::NamespaceLabels,
}

impl Scheduler {
    /// One pass: schedule every pending pod, oldest first. Returns how many were bound.
    ///
    /// Decisions are made one pod at a time against node usage that includes every pod placed
    /// earlier in the pass (so a node is never overcommitted), and the writes of up to
    /// [`IN_FLIGHT`] pods run concurrently behind them. A bind that fails leaves its
    /// reservation in place until the pass ends: conservative, never an overcommit.
    pub async fn schedule_pending<A: Api + Clone + 'static>(
        &mut self,
        api: &Cached<A>,
    ) -> Result<usize, ferry_api::client::ClientError> {
        let started = std::time::Instant::now();
        let all = ListOptions::default();
        let (nodes, pods) = tokio::try_join!(api.snapshot_now("Node"), api.snapshot_now("Pod"))?;
        // Binds the cache shows (or pods gone) need no assuming any more.
        let seen: HashMap<&str, &str> = pods
            .iter()
            .map(|p| (s(p, "/metadata/uid"), s(p, "/spec/nodeName")))
            .collect();
        self.assumed.retain(|uid, (_, at)| {
            at.elapsed() < ASSUME_FOR && seen.get(uid.as_str()).is_some_and(|n| n.is_empty())
        });
        let mut infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::from_node(n)).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        // Pods using claims bound to volumes with node affinity (local volumes) carry that
        // affinity too, so they stay with their data.
        let uses_claims = |p: &Value| {
            p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|v| v.get("persistentVolumeClaim").is_some()))
        };
        let mut adjusted: HashMap<usize, Value> = HashMap::new();
        // Pods whose claims are missing or waiting for an immediate binding wait, unplaced.
        let mut blocked: HashMap<String, String> = HashMap::new();
        if pods.iter().any(|p| wants_scheduling(p) && uses_claims(p)) {
            let (pvcs, pvs) = tokio::try_join!(
                api.list("PersistentVolumeClaim", &all),
                api.list("PersistentVolume", &all)
            )?;
            let plain = |mut list: Value| match list.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            let (pvcs, pvs) = (plain(pvcs), plain(pvs));
            use crate::controllers::volumebinding::{claims_unready, with_volume_affinity};
            for (i, p) in pods.iter().enumerate() {
                if !(wants_scheduling(p) && uses_claims(p)) {
                    continue;
                }
                if let Some(why) = claims_unready(p, &pvcs) {
                    blocked.insert(s(p, "/metadata/uid").to_string(), why);
                } else if let Some(a) = with_volume_affinity(p, &pvcs, &pvs) {
                    adjusted.insert(i, a);
                }
            }
        }
        let mut pending: Vec<&Value> = Vec::new();
        let mut bound_pods: Vec<(usize, &Value)> = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            let p: &Value = p;
            let node = match self.assumed.get(s(p, "/metadata/uid")) {
                Some((node, _)) => node.as_str(),
                None => s(p, "/spec/nodeName"),
            };
            if node.is_empty() && wants_scheduling(p) {
                pending.push(adjusted.get(&i).unwrap_or(p));
            } else if let Some(&i) = index.get(node)
                && !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
            {
                infos[i].add(&PodRequest::from_pod(p));
                bound_pods.push((i, p));
            }
        }
        if pending.is_empty() {
            return Ok(0);
        }
        // Where other pods run matters only to pods with inter-pod rules or spreading, and to
        // every pod once some bound pod has required anti-affinity (it is symmetric).
        let has_anti = |p: &Value| {
            p.pointer(
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            )
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        };
        let any_anti = pods.iter().any(|p| has_anti(p));
        let rules_matter = any_anti
            || pending
                .iter()
                .any(|p| !interpod::Constraints::from_pod(p).is_empty());
        if rules_matter {
            let namespaces = api.snapshot_now("Namespace").await?;
            self.namespaces = interpod::namespace_labels(namespaces.iter().map(|n| &**n));
        }
        let mut placed: Option<Vec<Vec<interpod::PlacedPod>>> = rules_matter.then(|| {
            let mut placed = vec![Vec::new(); infos.len()];
            for (i, p) in &bound_pods {
                placed[*i].push(interpod::PlacedPod::from_pod_in(p, &self.namespaces));
            }
            placed
        });
        pending.sort_by(|a, b| {
            s(a, "/metadata/creationTimestamp").cmp(s(b, "/metadata/creationTimestamp"))
        });
        let listed = started.elapsed();
        let considered = pending.len();
        // Each decision is made when a slot for its writes frees up, so binding starts with the
        // first pod rather than after the last decision.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut bound = 0;
        for pod in pending {
            let action = match blocked.get(s(pod, "/metadata/uid")) {
                Some(why) => {
                    let message = format!("0/{} nodes are available: {why}.", infos.len());
                    let already = pod
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .is_some_and(|c| {
                            c.iter().any(|c| {
                                c["type"] == "PodScheduled" && c["message"] == message.as_str()
                            })
                        });
                    (!already).then_some(Action::Unschedulable(pod, message))
                }
                None => self.place(&mut infos, placed.as_mut(), any_anti, pod),
            };
            let Some(action) = action else {
                continue;
            };
            if in_flight.len() >= IN_FLIGHT
                && let Some(done) = in_flight.next().await
                && let Some((uid, node)) = done
            {
                self.assumed.insert(uid, (node, Instant::now()));
                bound += 1;
            }
            in_flight.push(execute(api, action));
        }
        while let Some(done) = in_flight.next().await {
            if let Some((uid, node)) = done {
                self.assumed.insert(uid, (node, Instant::now()));
                bound += 1;
            }
        }
        tracing::debug!(
            nodes = infos.len(),
            pods = pods.len(),
            pending = considered,
            bound,
            list_ms = listed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "scheduling pass"
        );
        Ok(bound)
    }
}

impl Scheduler {
    /// Decides one pod: reserves its requests on the chosen node, or says why none fits (unless
    /// the pod already says so).
    /// `placed` (the pods bound to each node, when some pod's rules need them) gets the pod
    /// too; `any_anti`: some bound pod has required anti-affinity, which every pod must
    /// respect.
    fn place<'a>(
        &mut self,
        infos: &mut [NodeInfo],
        placed: Option<&mut Vec<Vec<interpod::PlacedPod>>>,
        any_anti: bool,
        pod: &'a Value,
    ) -> Option<Action<'a>> {
        let req = PodRequest::from_pod(pod);
        let rules = interpod::Constraints::from_pod_in(pod, &self.namespaces);
        let fit = match placed.as_deref() {
            // Every node, as the rules need the counts of every domain.
            Some(on_nodes) if any_anti || !rules.is_empty() => {
                interpod::decide(pod, &req, &rules, infos, on_nodes)
            }
            _ => {
                let picked = predicates::pick(pod, &req, infos, self.next_start);
                if !infos.is_empty() {
                    self.next_start = (self.next_start + picked.scanned) % infos.len();
                }
                picked.fit
            }
        };
        match fit {
            Ok(i) => {
                infos[i].add(&req);
                if let Some(on_nodes) = placed {
                    on_nodes[i].push(interpod::PlacedPod::from_pod_in(pod, &self.namespaces));
                }
                Some(Action::Bind(pod, infos[i].name.clone()))
            }
            Err(message) => {
                let already = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c["type"] == "PodScheduled" && c["message"] == message.as_str()
                        })
                    });
                (!already).then_some(Action::Unschedulable(pod, message))
            }
        }
    }
}

/// Runs passes on the leader whenever the store changes, and every second. Changes are
/// coalesced (at most one pass per 100 ms). Passes read Nodes and Pods from the shared caches
/// ([`Cached`]); listing every object each pass cost more CPU than binding a few pods on a
/// large cluster (docs/benchmarks.md).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let mut scheduler = Scheduler::default();
    let pace = crate::controllers::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_millis(100),
    };
    let mut turns = crate::controllers::Turns::new("scheduler", node, pace);
    while turns.next().await {
        if let Err(e) = scheduler.schedule_pending(&api).await {
            turns.failed(e);
        }
    }
}
