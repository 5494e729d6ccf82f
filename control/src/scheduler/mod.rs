//! The scheduler: places pods without a `spec.nodeName` on nodes. Runs only on the raft leader,
//! through the [`Api`] interface (never the store).
//!
//! [`decide`] is pure: filters (unschedulable, taints and tolerations, nodeSelector, required
//! node affinity, CPU / memory / pod-count fit against allocatable minus what bound pods
//! request), then scores (least-allocated plus balanced-allocation, as kube-scheduler's
//! defaults). An unschedulable pod gets `PodScheduled=False` with Kubernetes' summary
//! ("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint ...") and a
//! FailedScheduling Event, and is retried whenever the cluster changes.

pub mod predicates;

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::client::{Api, ListOptions};
use serde_json::{Value, json};

pub use predicates::{Fit, NodeInfo, PodRequest, decide};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

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
    let ns = s(pod, "/metadata/namespace");
    let name = s(pod, "/metadata/name");
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": s(pod, "/metadata/uid"), "apiVersion": "v1"},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "default-scheduler"},
        "reportingComponent": "default-scheduler",
        "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
    });
    if let Err(e) = api.create("Event", ns, &ev).await {
        tracing::debug!("recording event: {e}");
    }
}

/// One pass: schedule every pending pod, oldest first. Returns how many were bound.
pub async fn schedule_pending<A: Api>(api: &A) -> Result<usize, ferry_api::client::ClientError> {
    let nodes = api.list("Node", &ListOptions::default()).await?;
    let pods = api.list("Pod", &ListOptions::default()).await?;
    let nodes: Vec<Value> = nodes["items"].as_array().cloned().unwrap_or_default();
    let pods: Vec<Value> = pods["items"].as_array().cloned().unwrap_or_default();
    let mut infos: BTreeMap<String, NodeInfo> = nodes
        .iter()
        .map(|n| (s(n, "/metadata/name").to_string(), NodeInfo::from_node(n)))
        .collect();
    for p in &pods {
        if let Some(info) = infos.get_mut(s(p, "/spec/nodeName"))
            && !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
        {
            info.add(&PodRequest::from_pod(p));
        }
    }
    let mut pending: Vec<&Value> = pods.iter().filter(|p| wants_scheduling(p)).collect();
    pending.sort_by(|a, b| {
        s(a, "/metadata/creationTimestamp").cmp(s(b, "/metadata/creationTimestamp"))
    });
    let mut bound = 0;
    for pod in pending {
        let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        let req = PodRequest::from_pod(pod);
        match decide(pod, &req, infos.values()) {
            Fit::Node(node) => {
                let patch = json!({"metadata": {"resourceVersion": s(pod, "/metadata/resourceVersion")},
                                   "spec": {"nodeName": node}});
                match api.patch("Pod", ns, name, &patch).await {
                    Ok(bound_pod) => {
                        if let Some(info) = infos.get_mut(&node) {
                            info.add(&req);
                        }
                        set_scheduled_condition(api, &bound_pod, "True", "", "").await;
                        event(
                            api,
                            pod,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                        )
                        .await;
                        bound += 1;
                    }
                    Err(e) => tracing::debug!(pod = name, "binding: {e}"),
                }
            }
            Fit::None(message) => {
                let already = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c["type"] == "PodScheduled" && c["message"] == message.as_str()
                        })
                    });
                if !already {
                    set_scheduled_condition(api, pod, "False", "Unschedulable", &message).await;
                    event(api, pod, "Warning", "FailedScheduling", &message).await;
                }
            }
        }
    }
    Ok(bound)
}

/// Runs passes while `is_leader()`, whenever the store changes (at most every 100 ms).
pub async fn run<A: Api>(
    api: A,
    mut changes: tokio::sync::watch::Receiver<u64>,
    is_leader: impl Fn() -> bool,
) {
    loop {
        if is_leader()
            && let Err(e) = schedule_pending(&api).await
        {
            tracing::debug!("scheduling pass: {e}");
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
