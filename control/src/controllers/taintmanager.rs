//! Taint-based eviction, as Kubernetes' taint-eviction-controller does it: a pod bound to a
//! node with a `NoExecute` taint it does not tolerate is deleted (gracefully, as any delete);
//! one whose tolerations match every `NoExecute` taint of its node stays, until the shortest
//! `tolerationSeconds` among them runs out, counted from the taint's `timeAdded`.
//!
//! With the node lifecycle controller this is what heals a workload when a node dies: the node
//! stops heartbeating, gets the `node.kubernetes.io/unreachable` NoExecute taint, its pods are
//! deleted, and their controllers (ReplicaSet, StatefulSet, Job) create replacements that the
//! scheduler places elsewhere. Pods of a dead node stay `Terminating` until its agent returns
//! and finishes the deletion, or the Node is deleted, as in Kubernetes; controllers do not count
//! terminating pods. Kubernetes' admission gives every pod a 300 s toleration of the
//! not-ready and unreachable taints; Ferry does not, so pods leave a dead node as soon as it is
//! tainted (10 s of missed heartbeats by default): give a pod that toleration to keep it
//! longer. DaemonSet pods tolerate those taints and stay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::client::Api;
use serde_json::Value;

use super::cache::Cached;
use super::str_at as s;
use crate::scheduler::predicates::tolerates;

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Eviction {
    /// Tolerated for good (or no NoExecute taint).
    Stay,
    /// Now, because of this taint (`key=value:NoExecute`).
    Now(String),
    /// Once this instant passes (the shortest tolerationSeconds of the tolerated taints).
    At(DateTime<Utc>, String),
}

fn describe(taint: &Value) -> String {
    let (k, v) = (
        taint["key"].as_str().unwrap_or(""),
        taint["value"].as_str().unwrap_or(""),
    );
    if v.is_empty() {
        format!("{k}:NoExecute")
    } else {
        format!("{k}={v}:NoExecute")
    }
}

/// Pure: the eviction of `pod` on a node with `taints`, at `now`.
pub fn eviction(pod: &Value, taints: &[Value], now: DateTime<Utc>) -> Eviction {
    let tolerations: Vec<Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut due: Option<(DateTime<Utc>, String)> = None;
    for taint in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        if !tolerates(&tolerations, taint) {
            return Eviction::Now(describe(taint));
        }
        // The shortest bounded toleration of this taint decides.
        let seconds = tolerations
            .iter()
            .filter(|t| tolerates(std::slice::from_ref(t), taint))
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .map(|s| s.max(0))
            .min();
        let Some(seconds) = seconds else {
            continue;
        };
        let added = taint["timeAdded"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.with_timezone(&Utc));
        let at = added + chrono::Duration::seconds(seconds);
        if due.as_ref().is_none_or(|(d, _)| at < *d) {
            due = Some((at, describe(taint)));
        }
    }
    match due {
        Some((at, why)) if at <= now => Eviction::Now(why),
        Some((at, why)) => Eviction::At(at, why),
        None => Eviction::Stay,
    }
}

async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
) -> Result<(), ferry_api::client::ClientError> {
    let nodes = api.snapshot("Node").await?;
    let tainted: std::collections::HashMap<&str, Vec<Value>> = nodes
        .iter()
        .filter_map(|n| {
            let taints: Vec<Value> = n
                .pointer("/spec/taints")
                .and_then(Value::as_array)?
                .iter()
                .filter(|t| t["effect"] == "NoExecute")
                .cloned()
                .collect();
            (!taints.is_empty()).then(|| (s(n, "/metadata/name"), taints))
        })
        .collect();
    if tainted.is_empty() {
        return Ok(());
    }
    let pods = api.snapshot("Pod").await?;
    let now = Utc::now();
    for pod in &pods {
        let pod: &Value = pod;
        let Some(taints) = tainted.get(s(pod, "/spec/nodeName")) else {
            continue;
        };
        if !s(pod, "/metadata/deletionTimestamp").is_empty()
            || matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
        {
            continue;
        }
        let Eviction::Now(why) = eviction(pod, taints, now) else {
            continue;
        };
        let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        tracing::info!(pod = %format!("{ns}/{name}"), taint = %why, "evicting: NoExecute taint");
        super::record_event(
            api,
            "Pod",
            pod,
            "taint-eviction-controller",
            false,
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {ns}/{name} (node taint {why} not tolerated)"),
        )
        .await;
        if let Err(e) = api.delete("Pod", ns, name).await
            && !e.is_not_found()
        {
            tracing::warn!(pod = %format!("{ns}/{name}"), "evicting: {e}");
        }
    }
    Ok(())
}

/// Runs on the leader: a pass after changes (at most every 200 ms) and every second (timed
/// evictions). Passes read Nodes (and Pods when a node is tainted) from the shared caches.
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_millis(200),
    };
    super::run_passes("taint-eviction", node, pace, || reconcile_all(&api)).await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn pod(tolerations: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"tolerations": tolerations}})
    }

    #[test]
    fn untolerated_taints_evict_at_once_and_tolerations_delay_or_keep() {
        let now = at("2026-01-01T00:01:00Z");
        let unreachable = [
            json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                                  "timeAdded": "2026-01-01T00:00:30Z"}),
        ];
        assert_eq!(
            eviction(&pod(json!([])), &unreachable, now),
            Eviction::Now("node.kubernetes.io/unreachable:NoExecute".into())
        );
        // Tolerated for 300 s from the taint's timeAdded.
        let for_300 = pod(
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(
            eviction(&for_300, &unreachable, now),
            Eviction::At(
                at("2026-01-01T00:05:30Z"),
                "node.kubernetes.io/unreachable:NoExecute".into()
            )
        );
        assert!(matches!(
            eviction(&for_300, &unreachable, at("2026-01-01T00:05:30Z")),
            Eviction::Now(_)
        ));
        // Tolerated for good (DaemonSet pods), or only a NoSchedule taint.
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction(&forever, &unreachable, now), Eviction::Stay);
        let no_schedule = [json!({"key": "k", "effect": "NoSchedule"})];
        assert_eq!(eviction(&pod(json!([])), &no_schedule, now), Eviction::Stay);
        // Two tolerations of one taint: the shorter wins.
        let both = pod(
            json!([{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                              {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
        );
        assert!(
            matches!(eviction(&both, &unreachable, now), Eviction::At(t, _) if t == at("2026-01-01T00:01:30Z"))
        );
    }
}
