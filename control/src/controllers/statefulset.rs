//! StatefulSets: pods with stable names `<set>-<ordinal>`, stable DNS (`hostname` = pod name,
//! `subdomain` = `spec.serviceName`, so `<pod>.<service>.<ns>.svc` resolves through a headless
//! Service) and stable storage (one PVC `<template>-<set>-<ordinal>` per volumeClaimTemplate,
//! created before the pod and never deleted with it: a recreated pod gets the same claim).
//!
//! `OrderedReady` (the default) creates ordinals 0..n-1 one at a time, each Running and Ready
//! before the next, and removes surplus pods from the highest ordinal one at a time; nothing
//! proceeds while a pod is unhealthy. `Parallel` creates and deletes all at once. `RollingUpdate`
//! replaces pods whose `controller-revision-hash` is not the update revision, from the highest
//! ordinal down to `partition`, one at a time, each only once all pods are Running and Ready.
//! `OnDelete` replaces a pod only when someone deletes it. Failed pods are deleted and recreated.
//! The revision is `<set>-<template hash>`, also the name of the ControllerRevision recording
//! the template (`history`).
//! [`plan`] is pure.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_api::client::Api;
use serde_json::{Value, json};

use super::daemonset::REVISION_LABEL;
use super::deployment::{is_available, is_ready, template_hash};
use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

/// The label naming a pod's StatefulSet pod (for per-pod Services), as in Kubernetes.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a pod's ordinal, as in Kubernetes.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The update revision of a StatefulSet: `<name>-<template hash>`.
pub fn revision(sts: &Value) -> String {
    format!(
        "{}-{}",
        s(sts, "/metadata/name"),
        template_hash(
            sts.pointer("/spec/template").unwrap_or(&Value::Null),
            sts.pointer("/status/collisionCount")
                .and_then(Value::as_i64),
        )
    )
}

/// The ordinal of a pod named `<set>-<n>`.
pub fn ordinal(set: &str, pod: &str) -> Option<usize> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// The claim names of ordinal `i`: `<template>-<set>-<i>` per volumeClaimTemplate.
pub fn claim_names(sts: &Value, i: usize) -> Vec<(String, String)> {
    let set = s(sts, "/metadata/name");
    sts.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let tn = s(t, "/metadata/name");
            (tn.to_string(), format!("{tn}-{set}-{i}"))
        })
        .collect()
}

/// What a StatefulSet needs now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// PVCs to create (names, with the template name they come from).
    pub create_claims: Vec<(String, String)>,
    /// Ordinals to create pods for (after their claims).
    pub create: Vec<usize>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    /// Claims to delete (`persistentVolumeClaimRetentionPolicy.whenScaled: Delete`: claims of
    /// ordinals scaled away, once their pod is gone).
    pub delete_claims: Vec<String>,
    pub status: Value,
}

fn running_and_ready(p: &Value) -> bool {
    s(p, "/status/phase") == "Running" && is_ready(p)
}

fn terminating(p: &Value) -> bool {
    !s(p, "/metadata/deletionTimestamp").is_empty()
}

/// The pure decision for one StatefulSet over the pods and PVC names of its namespace.
pub fn plan<P: Borrow<Value>>(
    sts: &Value,
    pods: &[P],
    claims: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Plan {
    let set = s(sts, "/metadata/name");
    let uid = s(sts, "/metadata/uid");
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let parallel = s(sts, "/spec/podManagementPolicy") == "Parallel";
    let update_rev = revision(sts);
    let min_ready = sts
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut by_ord: BTreeMap<usize, &Value> = BTreeMap::new();
    for p in pods.iter().map(Borrow::borrow) {
        if super::deployment::controller_uid(p) != Some(uid) {
            continue;
        }
        if let Some(i) = ordinal(set, s(p, "/metadata/name")) {
            by_ord.insert(i, p);
        }
    }
    let rev_of = |p: &Value| {
        p.pointer(&format!("/metadata/labels/{REVISION_LABEL}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut out = Plan::default();
    let name = |p: &Value| s(p, "/metadata/name").to_string();
    // Claims of every wanted ordinal exist before its pod.
    for i in 0..replicas {
        for (t, c) in claim_names(sts, i) {
            if !claims.contains(&c) {
                out.create_claims.push((t, c));
            }
        }
    }
    // Wanted ordinals, in order; `blocked` once an OrderedReady predecessor is not healthy.
    let mut blocked = false;
    for i in 0..replicas {
        match by_ord.get(&i) {
            None => {
                if !blocked {
                    out.create.push(i);
                }
                if !parallel {
                    blocked = true;
                }
            }
            Some(p) if terminating(p) => {
                if !parallel {
                    blocked = true;
                }
            }
            Some(p) if matches!(s(p, "/status/phase"), "Failed" | "Succeeded") => {
                if !blocked {
                    out.delete.push(name(p));
                }
                if !parallel {
                    blocked = true;
                }
            }
            Some(p) => {
                if !parallel && !running_and_ready(p) {
                    blocked = true;
                }
            }
        }
    }
    // Surplus ordinals, from the highest.
    let condemned: Vec<&Value> = by_ord.range(replicas..).rev().map(|(_, p)| *p).collect();
    if parallel {
        out.delete.extend(
            condemned
                .iter()
                .filter(|p| !terminating(p))
                .map(|p| name(p)),
        );
    } else if !blocked && let Some(p) = condemned.first() {
        // One at a time, and only once the one before has finished terminating.
        if !terminating(p) {
            out.delete.push(name(p));
        }
    }
    // Claims of ordinals scaled away, when the retention policy says so.
    if s(sts, "/spec/persistentVolumeClaimRetentionPolicy/whenScaled") == "Delete" {
        let templates: Vec<String> = claim_names(sts, 0).into_iter().map(|(t, _)| t).collect();
        for c in claims {
            let gone = templates.iter().any(|t| {
                c.strip_prefix(t.as_str())
                    .and_then(|r| r.strip_prefix('-'))
                    .and_then(|r| ordinal(set, r))
                    .is_some_and(|i| i >= replicas && !by_ord.contains_key(&i))
            });
            if gone {
                out.delete_claims.push(c.clone());
            }
        }
    }
    // Rolling update, highest ordinal first, down to the partition.
    let all_healthy = (0..replicas).all(|i| {
        by_ord
            .get(&i)
            .is_some_and(|p| !terminating(p) && running_and_ready(p))
    }) && condemned.is_empty();
    if s(sts, "/spec/updateStrategy/type") != "OnDelete" && all_healthy {
        let partition = sts
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0) as usize;
        if let Some(p) = (partition..replicas)
            .rev()
            .filter_map(|i| by_ord.get(&i))
            .find(|p| rev_of(p) != update_rev)
        {
            out.delete.push(name(p));
        }
    }
    // Status.
    let live: Vec<&Value> = by_ord
        .values()
        .copied()
        .filter(|p| !terminating(p))
        .collect();
    let updated = live.iter().filter(|p| rev_of(p) == update_rev).count();
    let prior = s(sts, "/status/currentRevision");
    let current_rev = if prior.is_empty() || (updated == replicas && live.len() == replicas) {
        update_rev.clone()
    } else {
        prior.to_string()
    };
    out.status = json!({
        "replicas": live.len(),
        "readyReplicas": live.iter().filter(|p| is_ready(p)).count(),
        "availableReplicas": live.iter().filter(|p| is_available(p, min_ready, now)).count(),
        "currentReplicas": live.iter().filter(|p| rev_of(p) == current_rev).count(),
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": update_rev,
        "observedGeneration": sts.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
    });
    out
}

/// The pod of ordinal `i`.
pub fn pod_for(sts: &Value, i: usize) -> Value {
    let set = s(sts, "/metadata/name");
    let name = format!("{set}-{i}");
    let mut meta = sts
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    meta["name"] = json!(name);
    meta["namespace"] = json!(s(sts, "/metadata/namespace"));
    meta["labels"][REVISION_LABEL] = json!(revision(sts));
    meta["labels"][POD_NAME_LABEL] = json!(name);
    meta["labels"][POD_INDEX_LABEL] = json!(i.to_string());
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": set,
        "uid": s(sts, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("generateName");
    }
    let mut spec = sts
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    spec["hostname"] = json!(name);
    let svc = s(sts, "/spec/serviceName");
    if !svc.is_empty() {
        spec["subdomain"] = json!(svc);
    }
    let mut volumes: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    for (t, claim) in claim_names(sts, i) {
        volumes.retain(|v| v["name"] != t.as_str());
        volumes.push(json!({"name": t, "persistentVolumeClaim": {"claimName": claim}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = Value::Array(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The PVC `claim` from volumeClaimTemplate `template` (labelled with the set's selector labels,
/// not owned: it outlives the pod and the set).
pub fn claim_for(sts: &Value, template: &str, claim: &str) -> Value {
    let t = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .and_then(|ts| ts.iter().find(|t| s(t, "/metadata/name") == template))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut meta = t.get("metadata").cloned().unwrap_or_else(|| json!({}));
    meta["name"] = json!(claim);
    if s(
        sts,
        "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted",
    ) == "Delete"
    {
        // Owned by the set, so garbage collection removes it with the set.
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
            "name": s(sts, "/metadata/name"), "uid": s(sts, "/metadata/uid"),
            "blockOwnerDeletion": true}]);
    }
    meta["namespace"] = json!(s(sts, "/metadata/namespace"));
    for (k, v) in sts
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        meta["labels"][k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
           "spec": t.get("spec").cloned().unwrap_or_else(|| json!({}))})
}

/// One pass over every StatefulSet. One whose pods could not be created or deleted gets a
/// Warning Event and is retried after its back-off ([`Backoff`]).
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ferry_api::client::ClientError> {
    let sets = api.snapshot("StatefulSet").await?;
    backoff.retain(sets.iter().map(|o| &**o));
    if sets.is_empty() {
        return Ok(0);
    }
    let pods = api.snapshot("Pod").await?;
    let pvcs = api.snapshot("PersistentVolumeClaim").await?;
    let by_ns = super::by_namespace(&pods);
    let revisions = api.snapshot("ControllerRevision").await?;
    let revisions_by_ns = super::by_namespace(&revisions);
    let mut acted = 0;
    let started = Instant::now();
    for sts in &sets {
        let sts: &Value = sts;
        if !s(sts, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(sts, started) {
            continue;
        }
        let mut failure: Option<(&str, String)> = None;
        let ns = s(sts, "/metadata/namespace");
        let name = s(sts, "/metadata/name");
        let in_ns = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        let claims: BTreeSet<String> = pvcs
            .iter()
            .filter(|c| s(c, "/metadata/namespace") == ns)
            .map(|c| s(c, "/metadata/name").to_string())
            .collect();
        // The revision history first: `rollout undo` finds the template it runs now even
        // before its pods exist.
        let update_rev = revision(sts);
        let mut live = super::history::live_revisions(sts, in_ns, str::to_string);
        live.insert(s(sts, "/status/currentRevision").to_string());
        let revisions = revisions_by_ns.get(ns).map(Vec::as_slice);
        super::history::sync(
            api,
            "StatefulSet",
            sts,
            &update_rev,
            revisions.unwrap_or_default(),
            &live,
        )
        .await;
        let plan = plan(sts, in_ns, &claims, chrono::Utc::now());
        let ev = |reason: &'static str, message: String| async move {
            super::record_event(
                api,
                "StatefulSet",
                sts,
                "statefulset-controller",
                false,
                reason,
                &message,
            )
            .await
        };
        let mut failed_claims = false;
        for (t, c) in &plan.create_claims {
            match api
                .create("PersistentVolumeClaim", ns, &claim_for(sts, t, c))
                .await
            {
                Ok(_) => {
                    acted += 1;
                    ev(
                        "SuccessfulCreate",
                        format!("create Claim {c} in StatefulSet {name} success"),
                    )
                    .await;
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    failed_claims = true;
                    failure
                        .get_or_insert(("FailedCreate", format!("Error creating claim {c}: {e}")));
                }
            }
        }
        if !failed_claims {
            let creates: Vec<Value> = plan.create.iter().map(|i| pod_for(sts, *i)).collect();
            let creates = creates.iter().map(|p| api.create("Pod", ns, p));
            for r in futures::future::join_all(creates).await {
                match r {
                    Ok(p) => {
                        acted += 1;
                        let pod = s(&p, "/metadata/name");
                        ev(
                            "SuccessfulCreate",
                            format!("create Pod {pod} in StatefulSet {name} successful"),
                        )
                        .await;
                    }
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => {
                        failure.get_or_insert(("FailedCreate", format!("Error creating pod: {e}")));
                    }
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
                    ev(
                        "SuccessfulDelete",
                        format!("delete Pod {p} in StatefulSet {name} successful"),
                    )
                    .await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure.get_or_insert(("FailedDelete", format!("Error deleting pod: {e}")));
                }
            }
        }
        for c in &plan.delete_claims {
            match api.delete("PersistentVolumeClaim", ns, c).await {
                Ok(_) => {
                    acted += 1;
                    ev(
                        "SuccessfulDelete",
                        format!("delete Claim {c} in StatefulSet {name} success"),
                    )
                    .await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure
                        .get_or_insert(("FailedDelete", format!("Error deleting claim {c}: {e}")));
                }
            }
        }
        backoff
            .report(
                api,
                "StatefulSet",
                "statefulset-controller",
                sts,
                failure.as_ref(),
                started,
            )
            .await;
        if let Err(e) = super::update_status_fields(api, "StatefulSet", sts, &plan.status).await {
            tracing::debug!(statefulset = name, "status: {e}");
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
    let mut turns = super::Turns::new("statefulset", node, pace);
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
    use super::*;

    fn sts(replicas: i64, policy: &str) -> Value {
        json!({"metadata": {"name": "db", "namespace": "default", "uid": "sts-uid", "generation": 2},
            "spec": {"replicas": replicas, "serviceName": "db", "podManagementPolicy": policy,
                     "selector": {"matchLabels": {"app": "db"}},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": "x:1"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    fn pod(i: usize, rev: &str, ready: bool) -> Value {
        json!({"metadata": {"name": format!("db-{i}"), "namespace": "default",
                "labels": {"app": "db", REVISION_LABEL: rev},
                "ownerReferences": [{"uid": "sts-uid", "controller": true}]},
               "spec": {"nodeName": "n1"},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    }

    fn claims(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("data-db-{i}")).collect()
    }

    #[test]
    fn ordinals_parse_strictly() {
        assert_eq!(ordinal("db", "db-0"), Some(0));
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "db-01"), None);
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(ordinal("db", "db-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_claims() {
        let set = sts(3, "OrderedReady");
        let rev = revision(&set);
        let p = plan(&set, &[] as &[Value], &BTreeSet::new(), Utc::now());
        assert_eq!(
            p.create_claims,
            vec![
                ("data".to_string(), "data-db-0".to_string()),
                ("data".to_string(), "data-db-1".to_string()),
                ("data".to_string(), "data-db-2".to_string())
            ]
        );
        assert_eq!(p.create, vec![0]);
        // db-0 not ready: wait.
        let p = plan(&set, &[pod(0, &rev, false)], &claims(3), Utc::now());
        assert!(p.create.is_empty() && p.create_claims.is_empty());
        // db-0 ready: db-1 next.
        let p = plan(&set, &[pod(0, &rev, true)], &claims(3), Utc::now());
        assert_eq!(p.create, vec![1]);
        // Scale down from the highest ordinal, one at a time.
        let set1 = sts(1, "OrderedReady");
        let pods = vec![pod(0, &rev, true), pod(1, &rev, true), pod(2, &rev, true)];
        let p = plan(&set1, &pods, &claims(3), Utc::now());
        assert_eq!(p.delete, vec!["db-2"]);
        let mut dying = pod(2, &rev, true);
        dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let p = plan(
            &set1,
            &[pod(0, &rev, true), pod(1, &rev, true), dying],
            &claims(3),
            Utc::now(),
        );
        assert!(p.delete.is_empty(), "waits for db-2 to go");
        // An unhealthy pod blocks scale down too.
        let p = plan(
            &set1,
            &[pod(0, &rev, false), pod(1, &rev, true)],
            &claims(3),
            Utc::now(),
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["readyReplicas"], 1);
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let set = sts(3, "Parallel");
        let rev = revision(&set);
        let p = plan(&set, &[pod(1, &rev, false)], &claims(3), Utc::now());
        assert_eq!(p.create, vec![0, 2]);
        let set1 = sts(1, "Parallel");
        let p = plan(
            &set1,
            &[pod(0, &rev, true), pod(1, &rev, false), pod(2, &rev, true)],
            &claims(3),
            Utc::now(),
        );
        assert_eq!(p.delete, vec!["db-2", "db-1"]);
    }

    #[test]
    fn rolling_update_from_the_highest_ordinal_down_to_the_partition() {
        let mut set = sts(3, "OrderedReady");
        set["status"] = json!({"currentRevision": "db-old"});
        let rev = revision(&set);
        let old = vec![
            pod(0, "db-old", true),
            pod(1, "db-old", true),
            pod(2, "db-old", true),
        ];
        let p = plan(&set, &old, &claims(3), Utc::now());
        assert_eq!(p.delete, vec!["db-2"]);
        assert_eq!(p.status["currentRevision"], "db-old");
        assert_eq!(p.status["updateRevision"], rev.as_str());
        assert_eq!(p.status["currentReplicas"], 3);
        // db-2 recreated but not ready yet: wait.
        let mid = vec![
            pod(0, "db-old", true),
            pod(1, "db-old", true),
            pod(2, &rev, false),
        ];
        let p = plan(&set, &mid, &claims(3), Utc::now());
        assert!(p.delete.is_empty());
        assert_eq!(p.status["updatedReplicas"], 1);
        let mid = vec![
            pod(0, "db-old", true),
            pod(1, "db-old", true),
            pod(2, &rev, true),
        ];
        let p = plan(&set, &mid, &claims(3), Utc::now());
        assert_eq!(p.delete, vec!["db-1"]);
        // A partition of 2 keeps ordinals below it on the old revision.
        let mut part = set.clone();
        part["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(2);
        let p = plan(&part, &mid, &claims(3), Utc::now());
        assert!(p.delete.is_empty());
        // All updated: the current revision moves.
        let done = vec![pod(0, &rev, true), pod(1, &rev, true), pod(2, &rev, true)];
        let p = plan(&set, &done, &claims(3), Utc::now());
        assert_eq!(p.status["currentRevision"], rev.as_str());
        // OnDelete never deletes for an update.
        let mut on_delete = set.clone();
        on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(
            plan(&on_delete, &old, &claims(3), Utc::now())
                .delete
                .is_empty()
        );
    }

    #[test]
    fn failed_pods_are_replaced_and_pods_get_identity_and_claims() {
        let set = sts(2, "OrderedReady");
        let rev = revision(&set);
        let mut failed = pod(0, &rev, false);
        failed["status"]["phase"] = json!("Failed");
        let p = plan(&set, &[failed, pod(1, &rev, true)], &claims(2), Utc::now());
        assert_eq!(p.delete, vec!["db-0"]);
        let pod = pod_for(&set, 1);
        assert_eq!(pod["metadata"]["name"], "db-1");
        assert_eq!(pod["spec"]["hostname"], "db-1");
        assert_eq!(pod["spec"]["subdomain"], "db");
        assert_eq!(pod["metadata"]["labels"][POD_NAME_LABEL], "db-1");
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], rev.as_str());
        assert_eq!(
            pod["spec"]["volumes"][0],
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-db-1"}})
        );
        let c = claim_for(&set, "data", "data-db-1");
        assert_eq!(c["metadata"]["name"], "data-db-1");
        assert_eq!(c["metadata"]["labels"]["app"], "db");
        assert!(c["metadata"].get("ownerReferences").is_none());
        assert_eq!(c["spec"]["resources"]["requests"]["storage"], "1Gi");
    }

    #[test]
    fn claim_retention_policy() {
        let mut set = sts(1, "OrderedReady");
        let rev = revision(&set);
        // Retain (the default): claims of scaled-away ordinals stay.
        let p = plan(&set, &[pod(0, &rev, true)], &claims(3), Utc::now());
        assert!(p.delete_claims.is_empty());
        // whenScaled Delete: claims of ordinals >= replicas go once their pod is gone.
        set["spec"]["persistentVolumeClaimRetentionPolicy"] =
            json!({"whenScaled": "Delete", "whenDeleted": "Delete"});
        let p = plan(
            &set,
            &[pod(0, &rev, true), pod(1, &rev, true)],
            &claims(3),
            Utc::now(),
        );
        assert_eq!(p.delete_claims, vec!["data-db-2"]);
        assert_eq!(p.delete, vec!["db-1"]);
        // whenDeleted Delete: the claim is owned by the set (garbage collection removes it).
        let c = claim_for(&set, "data", "data-db-0");
        assert_eq!(c["metadata"]["ownerReferences"][0]["uid"], "sts-uid");
    }
}
