//! DaemonSets: one pod from `spec.template` on every eligible node.
//!
//! A node is eligible when the template's nodeSelector, required node affinity and tolerations
//! (plus the tolerations Kubernetes gives every daemon pod: not-ready, unreachable,
//! disk/memory/pid pressure, unschedulable; network-unavailable for hostNetwork pods) let it run
//! there. Pods are created with `spec.nodeName` set to their node directly (the pre-1.12
//! Kubernetes way; the default scheduler is not involved, so resources are not checked), carry a
//! `controller-revision-hash` label (the template's hash) and are owned by the DaemonSet. Pods on
//! nodes no longer eligible (or gone) are deleted, as are failed pods (recreated next pass) and
//! duplicates on one node.
//!
//! Updates: `RollingUpdate` deletes old-revision pods, unavailable ones first, while no more than
//! `maxUnavailable` (default 1, of the desired count, rounded up) nodes lack an available pod; the
//! replacement is created on the next pass. With `maxSurge` (a number or a percentage of the
//! desired count, rounded up) a node instead gets the new pod beside its old one, at most
//! `maxSurge` nodes at a time, and the old pod goes once the new one is available.
//! `OnDelete` replaces a pod only after someone deletes it. [`plan`] is pure.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_api::client::Api;
use serde_json::{Value, json};

use super::deployment::{is_available, is_ready, scaled_value, template_hash};
use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;
use crate::scheduler::NodeInfo;
use crate::scheduler::predicates::placement_fits;

/// The label with a pod's template revision, as in Kubernetes.
pub const REVISION_LABEL: &str = "controller-revision-hash";

fn controller_uid(pod: &Value) -> Option<&str> {
    super::deployment::controller_uid(pod)
}

/// The tolerations the DaemonSet controller adds to every daemon pod.
pub fn default_tolerations(host_network: bool) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The template's pod spec with the default tolerations added (those already present kept).
fn daemon_pod_spec(ds: &Value) -> Value {
    let mut spec = ds
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let host_network = spec["hostNetwork"] == true;
    let mut tolerations: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for t in default_tolerations(host_network) {
        if !tolerations
            .iter()
            .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
        {
            tolerations.push(t);
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
    spec
}

/// The revision hash of the DaemonSet's template.
pub fn revision(ds: &Value) -> String {
    template_hash(
        ds.pointer("/spec/template").unwrap_or(&Value::Null),
        ds.pointer("/status/collisionCount").and_then(Value::as_i64),
    )
}

/// What a DaemonSet needs now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Nodes to create a pod on.
    pub create: Vec<String>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    pub status: Value,
}

/// The pure decision for one DaemonSet over all nodes and the pods of its namespace at `now`.
pub fn plan<N: Borrow<Value>, P: Borrow<Value>>(
    ds: &Value,
    nodes: &[N],
    pods: &[P],
    now: DateTime<Utc>,
) -> Plan {
    let uid = s(ds, "/metadata/uid");
    let rev = revision(ds);
    let min_ready = ds
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let probe = json!({"spec": daemon_pod_spec(ds)});
    // Owned, not terminating pods by node.
    let mut by_node: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    let mut terminating: BTreeSet<&str> = BTreeSet::new();
    for p in pods
        .iter()
        .map(Borrow::borrow)
        .filter(|p| controller_uid(p) == Some(uid))
    {
        let node = s(p, "/spec/nodeName");
        if !s(p, "/metadata/deletionTimestamp").is_empty() {
            terminating.insert(node);
            continue;
        }
        by_node.entry(node).or_default().push(p);
    }
    // Kubernetes' nodeShouldRunDaemonPod: a new pod needs NoSchedule and NoExecute taints
    // tolerated; a running one keeps its node unless a NoExecute taint is not.
    let eligible: BTreeSet<String> = nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|n| s(n, "/metadata/deletionTimestamp").is_empty())
        .map(NodeInfo::from_node)
        .filter(|n| {
            if by_node.contains_key(n.name.as_str()) {
                let mut n = n.clone();
                n.taints.retain(|t| t["effect"] == "NoExecute");
                placement_fits(&probe, &n)
            } else {
                placement_fits(&probe, n)
            }
        })
        .map(|n| n.name)
        .collect();
    let mut out = Plan::default();
    let name = |p: &Value| s(p, "/metadata/name").to_string();
    let pod_rev = |p: &Value| {
        p.pointer(&format!("/metadata/labels/{REVISION_LABEL}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let desired = eligible.len() as i64;
    let rolling = s(ds, "/spec/updateStrategy/type") != "OnDelete";
    // maxSurge (RollingUpdate): a node may run a new pod beside its old one until the new one
    // is available.
    let max_surge = if rolling {
        ds.pointer("/spec/updateStrategy/rollingUpdate/maxSurge")
            .and_then(|v| scaled_value(v, desired, true).ok())
            .unwrap_or(0)
    } else {
        0
    };
    let mut misscheduled = 0;
    // Per eligible node: its one kept pod (the new-revision one while surging)...
    let mut kept: BTreeMap<&str, &Value> = BTreeMap::new();
    // ...and, while a new pod surges on the node, the old pod it replaces.
    let mut surging: BTreeMap<&str, &Value> = BTreeMap::new();
    for (node, list) in &mut by_node {
        if !eligible.contains(*node) {
            misscheduled += list.len();
            out.delete.extend(list.iter().map(|p| name(p)));
            continue;
        }
        list.sort_by_key(|p| s(p, "/metadata/creationTimestamp").to_string());
        let (failed, live): (Vec<&Value>, Vec<&Value>) =
            list.iter().partition(|p| s(p, "/status/phase") == "Failed");
        out.delete.extend(failed.iter().map(|p| name(p)));
        let (new, old): (Vec<&Value>, Vec<&Value>) = live.iter().partition(|p| pod_rev(p) == rev);
        match (new.split_first(), old.split_first()) {
            (Some((fresh, dups)), Some((first_old, older))) if max_surge > 0 => {
                kept.insert(node, fresh);
                out.delete.extend(dups.iter().map(|p| name(p)));
                if is_available(fresh, min_ready, now) {
                    // The surge is over on this node: the old pods go.
                    out.delete.extend(old.iter().map(|p| name(p)));
                } else {
                    surging.insert(node, first_old);
                    out.delete.extend(older.iter().map(|p| name(p)));
                }
            }
            _ => {
                if let Some((first, dups)) = live.split_first() {
                    kept.insert(node, first);
                    out.delete.extend(dups.iter().map(|p| name(p)));
                }
            }
        }
    }
    for node in &eligible {
        if !kept.contains_key(node.as_str()) && !terminating.contains(node.as_str()) {
            out.create.push(node.clone());
        }
    }
    let available = kept
        .values()
        .filter(|p| is_available(p, min_ready, now))
        .count() as i64;
    if rolling && max_surge > 0 {
        // Surge: an old pod that is not available is replaced at once; an available one gets
        // a new pod beside it while fewer than maxSurge nodes are surging, and goes once that
        // one is available (above).
        let mut in_flight = surging.len() as i64;
        for (node, p) in &kept {
            if pod_rev(p) == rev {
                continue;
            }
            if !is_available(p, min_ready, now) {
                out.delete.push(name(p));
            } else if in_flight < max_surge {
                out.create.push((*node).to_string());
                in_flight += 1;
            }
        }
    } else if rolling {
        let max_unavailable = ds
            .pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
            .map(|v| scaled_value(v, desired, true).unwrap_or(1))
            .unwrap_or(1)
            .max(1);
        let mut unavailable = desired - available;
        let old: Vec<&Value> = kept
            .values()
            .copied()
            .filter(|p| pod_rev(p) != rev)
            .collect();
        // Old pods that are not available cost nothing to replace.
        for p in old.iter().filter(|p| !is_available(p, min_ready, now)) {
            out.delete.push(name(p));
        }
        for p in old.iter().filter(|p| is_available(p, min_ready, now)) {
            if unavailable >= max_unavailable {
                break;
            }
            out.delete.push(name(p));
            unavailable += 1;
        }
    }
    let updated = kept.values().filter(|p| pod_rev(p) == rev).count();
    out.status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": kept.len(),
        "numberMisscheduled": misscheduled,
        "numberReady": kept.values().filter(|p| is_ready(p)).count(),
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
        "observedGeneration": ds.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
    });
    out
}

/// The pod the DaemonSet runs on `node`.
pub fn pod_for(ds: &Value, node: &str) -> Value {
    let name = s(ds, "/metadata/name");
    let mut meta = ds
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    meta["generateName"] = json!(format!("{name}-"));
    meta["namespace"] = json!(s(ds, "/metadata/namespace"));
    meta["labels"][REVISION_LABEL] = json!(revision(ds));
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
        "uid": s(ds, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    let mut spec = daemon_pod_spec(ds);
    spec["nodeName"] = json!(node);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// One pass over every DaemonSet. One whose pods could not be created or deleted gets a
/// Warning Event and is retried after its back-off ([`Backoff`]).
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ferry_api::client::ClientError> {
    let sets = api.snapshot("DaemonSet").await?;
    backoff.retain(sets.iter().map(|o| &**o));
    if sets.is_empty() {
        return Ok(0);
    }
    let nodes = api.snapshot("Node").await?;
    let pods = api.snapshot("Pod").await?;
    let by_ns = super::by_namespace(&pods);
    let revisions = api.snapshot("ControllerRevision").await?;
    let revisions_by_ns = super::by_namespace(&revisions);
    let mut acted = 0;
    let started = Instant::now();
    for ds in &sets {
        let ds: &Value = ds;
        if !s(ds, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(ds, started) {
            continue;
        }
        let mut failure: Option<(&str, String)> = None;
        let ns = s(ds, "/metadata/namespace");
        let name = s(ds, "/metadata/name");
        let in_ns = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        // The revision history first: `rollout undo` finds the template it runs now even
        // before its pods exist.
        let hash = revision(ds);
        let live = super::history::live_revisions(ds, in_ns, |h| format!("{name}-{h}"));
        let revisions = revisions_by_ns.get(ns).map(Vec::as_slice);
        super::history::sync(
            api,
            "DaemonSet",
            ds,
            &format!("{name}-{hash}"),
            revisions.unwrap_or_default(),
            &live,
        )
        .await;
        let plan = plan(ds, &nodes, in_ns, chrono::Utc::now());
        let creates = plan
            .create
            .iter()
            .map(|n| pod_for(ds, n))
            .collect::<Vec<_>>();
        let creates = creates.iter().map(|p| api.create("Pod", ns, p));
        let ev = |reason: &'static str, message: String| async move {
            super::record_event(
                api,
                "DaemonSet",
                ds,
                "daemonset-controller",
                false,
                reason,
                &message,
            )
            .await
        };
        for r in futures::future::join_all(creates).await {
            match r {
                Ok(p) => {
                    acted += 1;
                    ev(
                        "SuccessfulCreate",
                        format!("Created pod: {}", s(&p, "/metadata/name")),
                    )
                    .await;
                }
                Err(e) => {
                    failure.get_or_insert(("FailedCreate", format!("Error creating pod: {e}")));
                }
            }
        }
        let deletes = plan
            .delete
            .iter()
            .map(|p| async move { (p, api.delete("Pod", ns, p).await) });
        for (p, r) in futures::future::join_all(deletes).await {
            match r {
                Ok(_) => {
                    acted += 1;
                    ev("SuccessfulDelete", format!("Deleted pod: {p}")).await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure.get_or_insert(("FailedDelete", format!("Error deleting pod: {e}")));
                }
            }
        }
        backoff
            .report(
                api,
                "DaemonSet",
                "daemonset-controller",
                ds,
                failure.as_ref(),
                started,
            )
            .await;
        if let Err(e) = super::update_status_fields(api, "DaemonSet", ds, &plan.status).await {
            tracing::debug!(daemonset = name, "status: {e}");
        }
    }
    Ok(acted)
}

/// Runs passes on the leader whenever the store changes (at most every 100 ms).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(100),
    };
    let mut turns = super::Turns::new("daemonset", node, pace);
    let mut backoff = Backoff::default();
    while turns.next().await {
        if let Err(e) = reconcile_all(&api, &mut backoff).await {
            turns.failed(e);
        }
        turns.requeue_after(backoff.next_due(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    const NO_PODS: &[Value] = &[];
    use super::*;

    fn ds(extra_spec: Value) -> Value {
        let mut d = json!({"metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        for (k, v) in extra_spec.as_object().into_iter().flatten() {
            d["spec"][k] = v.clone();
        }
        d
    }

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    fn pod(name: &str, node: &str, rev: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "agent", REVISION_LABEL: rev},
                "ownerReferences": [{"uid": "ds-uid", "controller": true}]},
               "spec": {"nodeName": node},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    }

    fn now() -> DateTime<Utc> {
        chrono::Utc::now()
    }

    #[test]
    fn one_pod_per_eligible_node_with_selector_and_taints() {
        let d = ds(json!({}));
        let rev = revision(&d);
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node(
                "gpu",
                json!({}),
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            ),
            // Default tolerations cover a not-ready or cordoned node.
            node(
                "notready",
                json!({}),
                json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                       {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            ),
        ];
        let pods = vec![pod("agent-a", "a", &rev, true)];
        let p = plan(&d, &nodes, &pods, now());
        assert_eq!(p.create, vec!["b", "notready"]);
        assert!(p.delete.is_empty());
        assert_eq!(p.status["desiredNumberScheduled"], 3);
        assert_eq!(p.status["currentNumberScheduled"], 1);
        assert_eq!(p.status["numberReady"], 1);
        assert_eq!(p.status["updatedNumberScheduled"], 1);
        assert_eq!(p.status["observedGeneration"], 3);

        // A nodeSelector narrows the nodes; a pod on a node no longer eligible goes.
        let d = ds(json!({}));
        let mut d2 = d.clone();
        d2["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        let rev2 = revision(&d2);
        let nodes = vec![
            node("a", json!({"disk": "ssd"}), json!([])),
            node("b", json!({}), json!([])),
        ];
        let pods = vec![
            pod("agent-a", "a", &rev2, true),
            pod("agent-b", "b", &rev2, true),
        ];
        let p = plan(&d2, &nodes, &pods, now());
        assert!(p.create.is_empty());
        assert_eq!(p.delete, vec!["agent-b"]);
        assert_eq!(p.status["numberMisscheduled"], 1);
        // Required node affinity too.
        let mut d3 = d.clone();
        d3["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}});
        let p = plan(&d3, &nodes, NO_PODS, now());
        assert_eq!(p.create, vec!["b"]);
        // A NoSchedule taint keeps new pods off but leaves a running one; NoExecute evicts.
        let tainted = |effect: &str| {
            vec![node(
                "a",
                json!({}),
                json!([{"key": "maint", "value": "x", "effect": effect}]),
            )]
        };
        assert!(
            plan(&d, &tainted("NoSchedule"), NO_PODS, now())
                .create
                .is_empty()
        );
        let running = vec![pod("agent-a", "a", &rev, true)];
        assert!(
            plan(&d, &tainted("NoSchedule"), &running, now())
                .delete
                .is_empty()
        );
        assert_eq!(
            plan(&d, &tainted("NoExecute"), &running, now()).delete,
            vec!["agent-a"]
        );
    }

    #[test]
    fn max_surge_starts_the_new_pod_before_the_old_one_goes() {
        let mut d = ds(json!({}));
        d["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        let rev = revision(&d);
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
        ];
        let (old_a, old_b) = (
            pod("old-a", "a", "old", true),
            pod("old-b", "b", "old", true),
        );
        // One node at a time gets a new pod beside its old one; nothing is deleted yet.
        let p = plan(&d, &nodes, &[&old_a, &old_b], now());
        assert_eq!(p.create, vec!["a"]);
        assert!(p.delete.is_empty());
        // While the new pod is not available, the old one stays and no other node surges.
        let mut new_a = pod("new-a", "a", &rev, false);
        new_a["metadata"]["creationTimestamp"] = json!("2026-01-01T00:01:00Z");
        let p = plan(&d, &nodes, &[&old_a, &new_a, &old_b], now());
        assert!(p.create.is_empty(), "{p:?}");
        assert!(p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status["updatedNumberScheduled"], 1);
        // Available: the old pod goes, and the next node surges.
        let new_a = pod("new-a", "a", &rev, true);
        let p = plan(&d, &nodes, &[&old_a, &new_a, &old_b], now());
        assert_eq!(p.delete, vec!["old-a"]);
        assert_eq!(p.create, vec!["b"]);
        // An old pod that is not available is replaced without surging.
        let sick = pod("old-b", "b", "old", false);
        let p = plan(&d, &nodes, &[&new_a, &sick], now());
        assert_eq!(p.delete, vec!["old-b"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let d = ds(json!({}));
        let rev = revision(&d);
        let nodes: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let pods = vec![
            pod("p-a", "a", "old", true),
            pod("p-b", "b", "old", true),
            pod("p-c", "c", "old", true),
        ];
        let p = plan(&d, &nodes, &pods, now());
        assert_eq!(p.delete.len(), 1, "{p:?}");
        assert!(p.create.is_empty());
        // One node without a pod (being replaced): no more deletions until it is available.
        let pods2 = vec![pod("p-b", "b", "old", true), pod("p-c", "c", "old", true)];
        let p = plan(&d, &nodes, &pods2, now());
        assert_eq!(p.create, vec!["a"]);
        assert!(p.delete.is_empty());
        // The replacement is not ready yet: still no deletion.
        let pods3 = vec![
            pod("n-a", "a", &rev, false),
            pod("p-b", "b", "old", true),
            pod("p-c", "c", "old", true),
        ];
        let p = plan(&d, &nodes, &pods3, now());
        assert!(p.delete.is_empty() && p.create.is_empty());
        assert_eq!(p.status["updatedNumberScheduled"], 1);
        assert_eq!(p.status["numberUnavailable"], 1);
        // An old pod that is not available is replaced at once, whatever the budget.
        let pods4 = vec![
            pod("n-a", "a", &rev, false),
            pod("p-b", "b", "old", false),
            pod("p-c", "c", "old", true),
        ];
        let p = plan(&d, &nodes, &pods4, now());
        assert_eq!(p.delete, vec!["p-b"]);
        // maxUnavailable 100% replaces all at once.
        let mut all = d.clone();
        all["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!("100%");
        let p = plan(&all, &nodes, &pods, now());
        assert_eq!(p.delete.len(), 3);
    }

    #[test]
    fn on_delete_failed_pods_and_duplicates() {
        let d = ds(json!({"updateStrategy": {"type": "OnDelete"}}));
        let rev = revision(&d);
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
        ];
        let mut failed = pod("f-b", "b", &rev, false);
        failed["status"]["phase"] = json!("Failed");
        let mut dup = pod("dup-a", "a", "old", true);
        dup["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
        let pods = vec![pod("p-a", "a", "old", true), dup, failed];
        let p = plan(&d, &nodes, &pods, now());
        // OnDelete keeps the old pod; the failed one goes and is replaced; the newer duplicate goes.
        assert_eq!(p.delete, vec!["dup-a", "f-b"]);
        assert_eq!(p.create, vec!["b"]);
        assert_eq!(p.status["updatedNumberScheduled"], 0);
        // A terminating pod's node waits for it to go before getting a new one.
        let mut term = pod("t-b", "b", &rev, true);
        term["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let p = plan(&d, &nodes, &[pod("p-a", "a", &rev, true), term], now());
        assert!(p.create.is_empty());
    }

    #[test]
    fn daemon_pods_are_bound_and_tolerate_node_problems() {
        let mut d = ds(json!({}));
        d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        let p = pod_for(&d, "a");
        assert_eq!(p["spec"]["nodeName"], "a");
        assert_eq!(p["metadata"]["generateName"], "agent-");
        assert_eq!(
            p["metadata"]["labels"][REVISION_LABEL],
            revision(&d).as_str()
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        let keys: Vec<&str> = p["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["key"].as_str())
            .collect();
        assert!(keys.contains(&"node.kubernetes.io/unreachable"));
        assert!(keys.contains(&"node.kubernetes.io/network-unavailable"));
    }
}
