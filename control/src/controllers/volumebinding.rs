//! PersistentVolume / PersistentVolumeClaim binding, and the built-in local provisioner.
//!
//! An unbound claim binds to an Available volume that fits: same storage class, every access
//! mode the claim asks for, capacity at least the request, labels matching the claim's
//! selector; the smallest fit wins, and a volume pre-bound to the claim (`spec.claimRef`) or named
//! by it (`spec.volumeName`) comes first. Binding writes the volume's `claimRef`, then the claim's
//! `volumeName`, then both phases `Bound` (each pass finishes a half-done binding).
//!
//! A claim of the storage class [`LOCAL_CLASS`] (`ferry.dev/local`, also the class of a claim
//! that names none: what a dev cluster's default class does) with no fitting volume is
//! provisioned with `WaitForFirstConsumer` semantics: once a pod using the claim is bound to a
//! node, a volume `pvc-<claim uid>` is created with `spec.local.path` = `<dir>/pvc-<uid>`
//! (`<dir>` from the node's [`NODE_VOLUME_DIR`] annotation, written by the agent: its
//! `<data dir>/local-volumes`; [`DEFAULT_VOLUME_DIR`] otherwise), node affinity to that node, the
//! claim's request as capacity and reclaim policy `Delete`. The scheduler keeps later pods of the
//! claim on that node ([`with_volume_affinity`]). The agent creates the directory and bind-mounts
//! it.
//!
//! A volume whose claim is gone is `Released`; with reclaim policy `Delete` the volume object
//! is deleted (the directory stays on the node: nothing removes it yet), with `Retain` it stays
//! Released until an administrator clears its `claimRef`.

use std::time::Duration;

use ferry_api::client::{Api, ListOptions};
use ferry_api::selector::LabelSelector;
use ferry_api::validation::parse_quantity;
use serde_json::{Value, json};

use crate::apiserver::objects::labels;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;
use ferry_api::volumes::{PV_PROTECTION, PVC_PROTECTION, finalizers};

/// The storage class of the built-in local provisioner (and the default class).
pub const LOCAL_CLASS: &str = "ferry.dev/local";
/// The node annotation naming where the agent keeps provisioned local volumes.
pub const NODE_VOLUME_DIR: &str = "ferry.dev/local-volume-dir";
/// Where provisioned local volumes live when the node does not say.
pub const DEFAULT_VOLUME_DIR: &str = "/var/lib/ferry/volumes";
/// Kubernetes' annotation naming a dynamically provisioned volume's provisioner.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The class a claim asks for: its `storageClassName`, or [`LOCAL_CLASS`] when unset (`""`
/// explicitly asks for volumes without a class).
pub fn claim_class(pvc: &Value) -> &str {
    match pvc
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
    {
        Some(c) => c,
        None => LOCAL_CLASS,
    }
}

fn request(pvc: &Value) -> f64 {
    pvc.pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(parse_quantity)
        .unwrap_or(0.0)
}

fn capacity(pv: &Value) -> f64 {
    pv.pointer("/spec/capacity/storage")
        .and_then(Value::as_str)
        .and_then(parse_quantity)
        .unwrap_or(0.0)
}

fn strings<'a>(v: &'a Value, ptr: &str) -> Vec<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Whether `pv` is bound (or pre-bound) to `pvc`.
fn claimed_by(pv: &Value, pvc: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    r["name"] == pvc["metadata"]["name"]
        && r["namespace"] == pvc["metadata"]["namespace"]
        && (s(pv, "/spec/claimRef/uid").is_empty() || r["uid"] == pvc["metadata"]["uid"])
}

/// Whether an unclaimed `pv` satisfies `pvc`.
pub fn fits(pv: &Value, pvc: &Value) -> bool {
    if s(pv, "/spec/storageClassName") != claim_class(pvc) {
        return false;
    }
    let modes = strings(pv, "/spec/accessModes");
    if !strings(pvc, "/spec/accessModes")
        .iter()
        .all(|m| modes.contains(m))
    {
        return false;
    }
    if capacity(pv) < request(pvc) {
        return false;
    }
    if s(pvc, "/spec/volumeMode") != s(pv, "/spec/volumeMode")
        && !(s(pvc, "/spec/volumeMode").is_empty() || s(pv, "/spec/volumeMode").is_empty())
    {
        return false;
    }
    match pvc.pointer("/spec/selector") {
        None | Some(Value::Null) => true,
        Some(sel) => serde_json::from_value::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
        >(sel.clone())
        .ok()
        .and_then(|sel| LabelSelector::from_k8s(&sel).ok())
        .is_some_and(|sel| sel.matches(&labels(pv))),
    }
}

/// What a claim needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAction {
    /// Nothing (bound, or nothing fits yet).
    None,
    /// Bind to this existing volume (or finish binding to it).
    Bind(String),
    /// Create this volume (pre-bound to the claim), then bind.
    Provision(Value),
}

/// The pure decision for one claim, given all volumes, the pods of its namespace and the nodes.
pub fn plan_claim(pvc: &Value, pvs: &[Value], pods: &[&Value], nodes: &[&Value]) -> ClaimAction {
    let bound = |pv: &Value| {
        s(pvc, "/spec/volumeName") == s(pv, "/metadata/name")
            && claimed_by(pv, pvc)
            && !s(pv, "/spec/claimRef/uid").is_empty()
    };
    if let Some(pv) = pvs.iter().find(|pv| bound(pv)) {
        let done = s(pvc, "/status/phase") == "Bound" && s(pv, "/status/phase") == "Bound";
        return if done {
            ClaimAction::None
        } else {
            ClaimAction::Bind(s(pv, "/metadata/name").to_string())
        };
    }
    let wanted = s(pvc, "/spec/volumeName");
    if !wanted.is_empty() {
        // Pre-bound by the user: only that volume, once it is free (or claimed by this claim).
        return match pvs.iter().find(|pv| s(pv, "/metadata/name") == wanted) {
            Some(pv)
                if s(pv, "/metadata/deletionTimestamp").is_empty()
                    && (pv["spec"]["claimRef"].is_null() || claimed_by(pv, pvc)) =>
            {
                ClaimAction::Bind(wanted.to_string())
            }
            _ => ClaimAction::None,
        };
    }
    let free = |pv: &&Value| {
        s(pv, "/metadata/deletionTimestamp").is_empty()
            && !matches!(s(pv, "/status/phase"), "Released" | "Failed")
    };
    if let Some(pv) = pvs.iter().filter(free).find(|pv| claimed_by(pv, pvc)) {
        return ClaimAction::Bind(s(pv, "/metadata/name").to_string());
    }
    let best = pvs
        .iter()
        .filter(free)
        .filter(|pv| pv["spec"]["claimRef"].is_null() && fits(pv, pvc))
        .min_by(|a, b| capacity(a).total_cmp(&capacity(b)));
    if let Some(pv) = best {
        return ClaimAction::Bind(s(pv, "/metadata/name").to_string());
    }
    if claim_class(pvc) != LOCAL_CLASS {
        return ClaimAction::None;
    }
    // WaitForFirstConsumer: provision on the node of the first pod bound that uses the claim.
    let claim = s(pvc, "/metadata/name");
    let consumer = pods.iter().find(|p| {
        s(p, "/metadata/deletionTimestamp").is_empty()
            && !s(p, "/spec/nodeName").is_empty()
            && p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|v| s(v, "/persistentVolumeClaim/claimName") == claim)
    });
    let Some(pod) = consumer else {
        return ClaimAction::None;
    };
    let node_name = s(pod, "/spec/nodeName");
    let node = nodes.iter().find(|n| s(n, "/metadata/name") == node_name);
    let dir = node
        .and_then(|n| {
            n.pointer("/metadata/annotations")
                .and_then(|a| a.get(NODE_VOLUME_DIR))
                .and_then(Value::as_str)
        })
        .filter(|d| d.starts_with('/'))
        .unwrap_or(DEFAULT_VOLUME_DIR);
    let hostname = node
        .map(|n| s(n, "/metadata/labels/kubernetes.io~1hostname"))
        .filter(|h| !h.is_empty())
        .unwrap_or(node_name);
    let uid = s(pvc, "/metadata/uid");
    let pv_name = format!("pvc-{uid}");
    let size = pvc
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .unwrap_or("1Gi");
    let modes = match pvc.pointer("/spec/accessModes") {
        Some(Value::Array(m)) if !m.is_empty() => Value::Array(m.clone()),
        _ => json!(["ReadWriteOnce"]),
    };
    ClaimAction::Provision(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: LOCAL_CLASS}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "storageClassName": LOCAL_CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
            "volumeMode": "Filesystem",
            "local": {"path": format!("{}/{pv_name}", dir.trim_end_matches('/'))},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": s(pvc, "/metadata/namespace"), "name": claim, "uid": uid},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
        },
    }))
}

/// What a volume needs.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeAction {
    None,
    /// Set `status.phase` to this.
    Phase(&'static str),
    /// Its claim is gone and its policy is Delete.
    Delete,
    /// Being deleted and no longer Bound: remove [`PV_PROTECTION`] so it goes.
    Unprotect,
}

/// Whether a claim being deleted may go: it carries [`PVC_PROTECTION`] and no pod of its
/// namespace that has not finished (Succeeded or Failed) uses it, terminating pods included.
pub fn protection_released(pvc: &Value, pods: &[&Value]) -> bool {
    if s(pvc, "/metadata/deletionTimestamp").is_empty()
        || !finalizers(pvc).contains(&PVC_PROTECTION)
    {
        return false;
    }
    let claim = s(pvc, "/metadata/name");
    !pods.iter().any(|p| {
        !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
            && p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|v| s(v, "/persistentVolumeClaim/claimName") == claim)
    })
}

/// The pure decision for one volume over all claims.
pub fn plan_volume(pv: &Value, pvcs: &[Value]) -> VolumeAction {
    let deleting = !s(pv, "/metadata/deletionTimestamp").is_empty();
    let phase = s(pv, "/status/phase");
    let want = if pv["spec"]["claimRef"].is_null() {
        "Available"
    } else {
        let ns = s(pv, "/spec/claimRef/namespace");
        let name = s(pv, "/spec/claimRef/name");
        let uid = s(pv, "/spec/claimRef/uid");
        let claim = pvcs
            .iter()
            .find(|c| s(c, "/metadata/namespace") == ns && s(c, "/metadata/name") == name);
        match claim {
            // Pre-bound to a claim not yet created, or claimed but not yet bound: Available.
            None if uid.is_empty() => "Available",
            Some(c) if uid.is_empty() || s(c, "/metadata/uid") == uid => {
                if s(c, "/spec/volumeName") == s(pv, "/metadata/name") && !uid.is_empty() {
                    "Bound"
                } else {
                    "Available"
                }
            }
            _ => {
                if s(pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" && !deleting {
                    return VolumeAction::Delete;
                }
                "Released"
            }
        }
    };
    // pv-protection: a volume being deleted stays while a claim is bound to it.
    if deleting {
        return if want != "Bound" && finalizers(pv).contains(&PV_PROTECTION) {
            VolumeAction::Unprotect
        } else {
            VolumeAction::None
        };
    }
    if phase == want {
        VolumeAction::None
    } else {
        VolumeAction::Phase(want)
    }
}

/// The pod with the node affinity of the volumes its claims are bound to added (ANDed with its
/// own required terms), or `None` when no bound volume restricts its nodes.
pub fn with_volume_affinity(pod: &Value, pvcs: &[Value], pvs: &[Value]) -> Option<Value> {
    let ns = s(pod, "/metadata/namespace");
    let mut extra: Vec<Vec<Value>> = Vec::new();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let claim = s(v, "/persistentVolumeClaim/claimName");
        if claim.is_empty() {
            continue;
        }
        let Some(pvc) = pvcs
            .iter()
            .find(|c| s(c, "/metadata/namespace") == ns && s(c, "/metadata/name") == claim)
        else {
            continue;
        };
        let vol = s(pvc, "/spec/volumeName");
        let Some(pv) = pvs
            .iter()
            .find(|pv| !vol.is_empty() && s(pv, "/metadata/name") == vol)
        else {
            continue;
        };
        if let Some(terms) = pv
            .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
            .and_then(Value::as_array)
            && !terms.is_empty()
        {
            extra.push(terms.clone());
        }
    }
    if extra.is_empty() {
        return None;
    }
    let ptr = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms";
    let mut terms: Vec<Value> = match pod.pointer(ptr).and_then(Value::as_array) {
        Some(t) if !t.is_empty() => t.clone(),
        _ => vec![json!({"matchExpressions": []})],
    };
    // (a ∨ b) ∧ (c ∨ d) = (a∧c) ∨ (a∧d) ∨ (b∧c) ∨ (b∧d).
    for more in extra {
        let mut next = Vec::new();
        for t in &terms {
            for m in &more {
                let mut exprs = t["matchExpressions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                exprs.extend(
                    m["matchExpressions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                next.push(json!({"matchExpressions": exprs}));
            }
        }
        terms = next;
    }
    let mut out = pod.clone();
    out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] =
        Value::Array(terms);
    Some(out)
}

/// Why the pod's claims keep it from being scheduled, if they do: a claim that does not exist
/// or is being deleted, or one that is unbound and not of the local (`WaitForFirstConsumer`)
/// class, as kube-scheduler's VolumeBinding filter.
pub fn claims_unready(pod: &Value, pvcs: &[Value]) -> Option<String> {
    let ns = s(pod, "/metadata/namespace");
    let mut unbound = false;
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let claim = s(v, "/persistentVolumeClaim/claimName");
        if claim.is_empty() {
            continue;
        }
        let Some(pvc) = pvcs
            .iter()
            .find(|c| s(c, "/metadata/namespace") == ns && s(c, "/metadata/name") == claim)
        else {
            return Some(format!("persistentvolumeclaim \"{claim}\" not found"));
        };
        if !s(pvc, "/metadata/deletionTimestamp").is_empty() {
            return Some(format!(
                "persistentvolumeclaim \"{claim}\" is being deleted"
            ));
        }
        if s(pvc, "/spec/volumeName").is_empty() && claim_class(pvc) != LOCAL_CLASS {
            unbound = true;
        }
    }
    unbound.then(|| "pod has unbound immediate PersistentVolumeClaims".to_string())
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn with_phase(obj: &Value, phase: &str) -> Value {
    let mut o = obj.clone();
    o["status"]["phase"] = json!(phase);
    o
}

async fn bind<A: Api>(
    api: &A,
    pvc: &Value,
    pv: &Value,
) -> Result<(), ferry_api::client::ClientError> {
    let ns = s(pvc, "/metadata/namespace");
    let mut pv = pv.clone();
    if !claimed_by(&pv, pvc) || s(&pv, "/spec/claimRef/uid").is_empty() {
        pv["spec"]["claimRef"] = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": ns, "name": s(pvc, "/metadata/name"), "uid": s(pvc, "/metadata/uid")});
        pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        pv = api.update("PersistentVolume", &pv).await?;
    }
    let mut pvc = pvc.clone();
    if s(&pvc, "/spec/volumeName") != s(&pv, "/metadata/name") {
        pvc["spec"]["volumeName"] = pv["metadata"]["name"].clone();
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        pvc = api.update("PersistentVolumeClaim", &pvc).await?;
    }
    if s(&pv, "/status/phase") != "Bound" {
        api.update_status("PersistentVolume", &with_phase(&pv, "Bound"))
            .await?;
    }
    if s(&pvc, "/status/phase") != "Bound" {
        let mut c = with_phase(&pvc, "Bound");
        c["status"]["capacity"] = pv["spec"]["capacity"].clone();
        c["status"]["accessModes"] = pv["spec"]["accessModes"].clone();
        api.update_status("PersistentVolumeClaim", &c).await?;
    }
    Ok(())
}

/// One pass over every claim and volume.
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
) -> Result<usize, ferry_api::client::ClientError> {
    let all = ListOptions::default();
    let (pvcs, pvs) = tokio::try_join!(
        api.list("PersistentVolumeClaim", &all),
        api.list("PersistentVolume", &all)
    )?;
    let (pvcs, mut pvs) = (items(&pvcs), items(&pvs));
    if pvcs.is_empty() && pvs.is_empty() {
        return Ok(0);
    }
    // Pods and nodes come from the caches only when some claim may need provisioning.
    let deleting = |c: &Value| !s(c, "/metadata/deletionTimestamp").is_empty();
    let protected = |c: &Value| finalizers(c).contains(&PVC_PROTECTION);
    // Pods and nodes (from the caches) matter only to claims that may need provisioning and
    // to protected claims being deleted.
    let needs_pods = pvcs.iter().any(|c| {
        if deleting(c) {
            protected(c)
        } else {
            s(c, "/spec/volumeName").is_empty()
        }
    });
    let (pods, nodes) = if needs_pods {
        tokio::try_join!(api.snapshot("Pod"), api.snapshot("Node"))?
    } else {
        Default::default()
    };
    let by_ns = super::by_namespace(&pods);
    let nodes: Vec<&Value> = nodes.iter().map(|n| &**n).collect();
    let mut acted = 0;
    for pvc in &pvcs {
        let name = s(pvc, "/metadata/name");
        let ns = s(pvc, "/metadata/namespace");
        let deleting = deleting(pvc);
        if deleting && !protected(pvc) {
            continue;
        }
        let in_ns = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        if deleting {
            if protection_released(pvc, in_ns) {
                let mut updated = pvc.clone();
                let rest: Vec<&str> = finalizers(pvc)
                    .into_iter()
                    .filter(|f| *f != PVC_PROTECTION)
                    .collect();
                updated["metadata"]["finalizers"] = json!(rest);
                match api.update("PersistentVolumeClaim", &updated).await {
                    Ok(_) => acted += 1,
                    Err(e) => tracing::debug!(claim = name, namespace = ns, "releasing: {e}"),
                }
            }
            continue;
        }
        let action = plan_claim(pvc, &pvs, in_ns, &nodes);
        let result = match action {
            ClaimAction::None => continue,
            ClaimAction::Bind(pv_name) => {
                let Some(pv) = pvs.iter().find(|pv| s(pv, "/metadata/name") == pv_name) else {
                    continue;
                };
                bind(api, pvc, pv).await
            }
            ClaimAction::Provision(pv) => match api.create("PersistentVolume", "", &pv).await {
                Ok(created) => {
                    super::record_event(
                        api,
                        "PersistentVolumeClaim",
                        pvc,
                        "persistentvolume-controller",
                        false,
                        "ProvisioningSucceeded",
                        &format!(
                            "Successfully provisioned volume {} using {LOCAL_CLASS} at {}",
                            s(&created, "/metadata/name"),
                            s(&created, "/spec/local/path")
                        ),
                    )
                    .await;
                    pvs.push(created.clone());
                    bind(api, pvc, &created).await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => acted += 1,
            Err(e) => tracing::debug!(claim = name, namespace = ns, "binding: {e}"),
        }
    }
    // Volumes: phases and reclaiming (from a fresh list: binding above changed some).
    let pvs = items(&api.list("PersistentVolume", &all).await?);
    let pvcs = items(&api.list("PersistentVolumeClaim", &all).await?);
    for pv in &pvs {
        let name = s(pv, "/metadata/name");
        let r = match plan_volume(pv, &pvcs) {
            VolumeAction::None => continue,
            VolumeAction::Phase(p) => api
                .update_status("PersistentVolume", &with_phase(pv, p))
                .await
                .map(|_| ()),
            VolumeAction::Delete => api.delete("PersistentVolume", "", name).await.map(|_| ()),
            VolumeAction::Unprotect => {
                let mut updated = pv.clone();
                let rest: Vec<&str> = finalizers(pv)
                    .into_iter()
                    .filter(|f| *f != PV_PROTECTION)
                    .collect();
                updated["metadata"]["finalizers"] = json!(rest);
                api.update("PersistentVolume", &updated).await.map(|_| ())
            }
        };
        match r {
            Ok(()) => acted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(volume = name, "{e}"),
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
    super::run_passes("volumebinding", node, pace, || reconcile_all(&api)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(extra: Value) -> Value {
        let mut c = json!({"metadata": {"name": "data", "namespace": "default", "uid": "c-uid"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c["spec"][k] = v.clone();
        }
        c
    }

    fn pv(name: &str, class: &str, size: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
               "spec": {"storageClassName": class, "capacity": {"storage": size},
                        "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "hostPath": {"path": "/tmp/x"}},
               "status": {"phase": "Available"}})
    }

    #[test]
    fn binds_the_smallest_fitting_volume() {
        let c = pvc(json!({"storageClassName": "manual"}));
        let pvs = vec![
            pv("big", "manual", "10Gi", json!({})),
            pv("small", "manual", "2Gi", json!({})),
            pv("tiny", "manual", "500Mi", json!({})),
            pv("other-class", "fast", "1Gi", json!({})),
        ];
        assert_eq!(
            plan_claim(&c, &pvs, &[], &[]),
            ClaimAction::Bind("small".into())
        );
        // Access modes must all be offered.
        let c2 = pvc(json!({"storageClassName": "manual", "accessModes": ["ReadWriteMany"]}));
        assert_eq!(plan_claim(&c2, &pvs, &[], &[]), ClaimAction::None);
        // A selector narrows the volumes.
        let c3 = pvc(
            json!({"storageClassName": "manual", "selector": {"matchLabels": {"tier": "gold"}}}),
        );
        let mut labelled = pvs.clone();
        labelled.push(pv("gold", "manual", "20Gi", json!({"tier": "gold"})));
        assert_eq!(
            plan_claim(&c3, &labelled, &[], &[]),
            ClaimAction::Bind("gold".into())
        );
        // A claimed volume is not free.
        let mut taken = pv("small", "manual", "2Gi", json!({}));
        taken["spec"]["claimRef"] = json!({"namespace": "default", "name": "other", "uid": "o"});
        assert_eq!(plan_claim(&c, &[taken], &[], &[]), ClaimAction::None);
    }

    #[test]
    fn half_done_and_finished_bindings() {
        let mut c = pvc(json!({"storageClassName": "manual"}));
        let mut v = pv("v", "manual", "1Gi", json!({}));
        v["spec"]["claimRef"] = json!({"namespace": "default", "name": "data", "uid": "c-uid"});
        assert_eq!(
            plan_claim(&c, &[v.clone()], &[], &[]),
            ClaimAction::Bind("v".into())
        );
        c["spec"]["volumeName"] = json!("v");
        assert_eq!(
            plan_claim(&c, &[v.clone()], &[], &[]),
            ClaimAction::Bind("v".into())
        );
        c["status"]["phase"] = json!("Bound");
        v["status"]["phase"] = json!("Bound");
        assert_eq!(plan_claim(&c, &[v.clone()], &[], &[]), ClaimAction::None);
        assert_eq!(plan_volume(&v, &[c.clone()]), VolumeAction::None);
        // The claim goes: Delete policy deletes, Retain releases.
        let mut del = v.clone();
        del["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        assert_eq!(plan_volume(&del, &[]), VolumeAction::Delete);
        v["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
        assert_eq!(plan_volume(&v, &[]), VolumeAction::Phase("Released"));
        // A recreated claim of the same name (another uid) does not get a released volume.
        let mut again = pvc(json!({"storageClassName": "manual"}));
        again["metadata"]["uid"] = json!("new-uid");
        let mut released = v.clone();
        released["status"]["phase"] = json!("Released");
        assert_eq!(plan_claim(&again, &[released], &[], &[]), ClaimAction::None);
        // A volume without a claim is Available.
        let mut fresh = pv("f", "manual", "1Gi", json!({}));
        fresh["status"] = json!({});
        assert_eq!(plan_volume(&fresh, &[]), VolumeAction::Phase("Available"));
    }

    #[test]
    fn a_volume_being_deleted_waits_for_its_claim() {
        let c = pvc(json!({"storageClassName": "manual", "volumeName": "v"}));
        let mut v = pv("v", "manual", "1Gi", json!({}));
        v["spec"]["claimRef"] = json!({"namespace": "default", "name": "data", "uid": "c-uid"});
        v["status"]["phase"] = json!("Bound");
        v["metadata"]["finalizers"] = json!([PV_PROTECTION]);
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        // Bound: it stays, whatever its reclaim policy.
        assert_eq!(
            plan_volume(&v, std::slice::from_ref(&c)),
            VolumeAction::None
        );
        v["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        assert_eq!(plan_volume(&v, &[c]), VolumeAction::None);
        // The claim is gone: the finalizer goes (never a second delete).
        assert_eq!(plan_volume(&v, &[]), VolumeAction::Unprotect);
        // Without the finalizer there is nothing to do.
        v["metadata"]["finalizers"] = json!([]);
        assert_eq!(plan_volume(&v, &[]), VolumeAction::None);
    }

    #[test]
    fn local_class_provisions_on_the_first_consumers_node() {
        let c = pvc(json!({}));
        assert_eq!(claim_class(&c), LOCAL_CLASS);
        assert_eq!(
            plan_claim(&c, &[], &[], &[]),
            ClaimAction::None,
            "waits for a consumer"
        );
        let pending = json!({"metadata": {"name": "p"}, "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
        assert_eq!(plan_claim(&c, &[], &[&pending], &[]), ClaimAction::None);
        let mut bound = pending.clone();
        bound["spec"]["nodeName"] = json!("n1");
        let n1 = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
            "annotations": {NODE_VOLUME_DIR: "/data/ferry/local-volumes"}}});
        let nodes = [&n1];
        let ClaimAction::Provision(v) = plan_claim(&c, &[], &[&bound], &nodes) else {
            panic!("provisions")
        };
        assert_eq!(v["metadata"]["name"], "pvc-c-uid");
        assert_eq!(
            v["spec"]["local"]["path"],
            "/data/ferry/local-volumes/pvc-c-uid"
        );
        assert_eq!(v["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(v["spec"]["claimRef"]["uid"], "c-uid");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
                [0],
            "n1"
        );
        // An explicit other class is not provisioned.
        let manual = pvc(json!({"storageClassName": "manual"}));
        let mut b2 = pending.clone();
        b2["spec"]["nodeName"] = json!("n1");
        assert_eq!(plan_claim(&manual, &[], &[&b2], &nodes), ClaimAction::None);
    }

    #[test]
    fn a_claim_in_use_is_protected_until_its_pods_finish() {
        let mut c = json!({"metadata": {"name": "data", "namespace": "default",
            "finalizers": [PVC_PROTECTION], "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        let pod = |phase: &str, claim: &str| {
            json!({"metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase}})
        };
        let (running, done, other) = (
            pod("Running", "data"),
            pod("Succeeded", "data"),
            pod("Running", "logs"),
        );
        assert!(!protection_released(&c, &[&running]));
        assert!(!protection_released(&c, &[&pod("Pending", "data"), &done]));
        assert!(protection_released(&c, &[&done, &other]));
        assert!(protection_released(&c, &[]));
        // Not being deleted, or without the finalizer: nothing to release.
        let live = json!({"metadata": {"name": "data", "finalizers": [PVC_PROTECTION]}});
        assert!(!protection_released(&live, &[]));
        c["metadata"]["finalizers"] = json!([]);
        assert!(!protection_released(&c, &[]));
    }

    #[test]
    fn scheduling_follows_the_bound_volume() {
        let mut c = pvc(json!({}));
        c["spec"]["volumeName"] = json!("v");
        let mut v = pv("v", LOCAL_CLASS, "1Gi", json!({}));
        v["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}});
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}}});
        let out = with_volume_affinity(&pod, &[c.clone()], &[v.clone()]).expect("restricted");
        let terms = out.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array).expect("terms");
        assert_eq!(terms.len(), 2);
        assert_eq!(
            terms[0]["matchExpressions"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(terms[1]["matchExpressions"][1]["values"][0], "n1");
        // No bound volume: unchanged.
        assert!(with_volume_affinity(&pod, &[], &[v]).is_none());
        // Missing or unbound immediate claims hold the pod back; an unbound local one does not.
        assert_eq!(
            claims_unready(&pod, &[]).as_deref(),
            Some("persistentvolumeclaim \"data\" not found")
        );
        assert_eq!(claims_unready(&pod, std::slice::from_ref(&c)), None);
        let local = pvc(json!({}));
        assert_eq!(claims_unready(&pod, &[local]), None);
        let manual = pvc(json!({"storageClassName": "manual"}));
        assert_eq!(
            claims_unready(&pod, &[manual]).as_deref(),
            Some("pod has unbound immediate PersistentVolumeClaims")
        );
    }
}
