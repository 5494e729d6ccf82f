//! ReplicaSets: keep `spec.replicas` pods from `spec.template` running for each ReplicaSet.
//!
//! A pod belongs to a ReplicaSet when its controller ownerReference names the ReplicaSet's uid;
//! matching orphans are adopted, as in Kubernetes. Missing pods are created (`<rs>-<random>`,
//! labels and spec from the template); surplus pods are deleted, least valuable first
//! (unscheduled, then not ready, then newest). Status reports replicas, readyReplicas,
//! availableReplicas (Ready for `spec.minReadySeconds`), fullyLabeledReplicas and
//! observedGeneration. Level-triggered on the leader
//! through [`Api`]; [`plan`] is pure.

use std::time::{Duration, Instant};

use ferry_api::client::Api;
use ferry_api::selector::LabelSelector;
use serde_json::{Value, json};

use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

use crate::apiserver::objects::labels;

fn controller_uid(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn is_active(pod: &Value) -> bool {
    s(pod, "/metadata/deletionTimestamp").is_empty()
        && !matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// What a ReplicaSet needs now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Orphan pods to adopt (names).
    pub adopt: Vec<String>,
    /// How many pods to create.
    pub create: usize,
    /// Pods to delete (names), least valuable first.
    pub delete: Vec<String>,
    pub status: Value,
}

/// The pure decision for one ReplicaSet over the pods of its namespace, at `now` (a pod is
/// available once Ready for `spec.minReadySeconds`).
pub fn plan(
    rs: &Value,
    pods: &[&Value],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Plan, String> {
    let uid = s(rs, "/metadata/uid");
    let sel = rs.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(sel).map_err(|e| format!("spec.selector: {e}"))?;
    let selector = LabelSelector::from_k8s(&sel).map_err(|e| format!("spec.selector: {e}"))?;
    let want = rs
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let mut owned: Vec<&Value> = Vec::new();
    let mut adopt = Vec::new();
    for &p in pods
        .iter()
        .filter(|p| is_active(p) && selector.matches(&labels(p)))
    {
        match controller_uid(p) {
            Some(u) if u == uid => owned.push(p),
            None => {
                adopt.push(s(p, "/metadata/name").to_string());
                owned.push(p);
            }
            Some(_) => {}
        }
    }
    let have = owned.len();
    let mut delete = Vec::new();
    if have > want {
        let mut ranked = owned.clone();
        // Kubernetes' ranking: unscheduled first, then not ready, then the newest.
        ranked.sort_by(|a, b| {
            let key = |p: &Value| {
                (
                    !s(p, "/spec/nodeName").is_empty(),
                    is_ready(p),
                    std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()),
                )
            };
            key(a).cmp(&key(b))
        });
        delete = ranked
            .iter()
            .take(have - want)
            .map(|p| s(p, "/metadata/name").to_string())
            .collect();
    }
    let ready = owned.iter().filter(|p| is_ready(p)).count();
    let min_ready = rs
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let available = owned
        .iter()
        .filter(|p| super::deployment::is_available(p, min_ready, now))
        .count();
    let status = json!({
        "replicas": have,
        "fullyLabeledReplicas": have,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
    });
    Ok(Plan {
        adopt,
        create: want.saturating_sub(have),
        delete,
        status,
    })
}

fn pod_from_template(rs: &Value) -> Value {
    let name = s(rs, "/metadata/name");
    let mut meta = rs
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    meta["generateName"] = json!(format!("{name}-"));
    meta["namespace"] = json!(s(rs, "/metadata/namespace"));
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
        "uid": s(rs, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": rs.pointer("/spec/template/spec").cloned().unwrap_or_else(|| json!({}))})
}

/// Kubernetes' `ReplicaFailure` status condition after a failed create or delete.
fn failure_condition(reason: &str, message: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"type": "ReplicaFailure", "status": "True", "reason": reason, "message": message,
           "lastTransitionTime": now})
}

/// One pass over every ReplicaSet, from the shared caches. A ReplicaSet whose pods could not be
/// created or deleted gets a `FailedCreate` / `FailedDelete` Warning Event and a
/// `ReplicaFailure` condition, and is retried after its back-off ([`Backoff`]).
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ferry_api::client::ClientError> {
    let sets = api.snapshot("ReplicaSet").await?;
    backoff.retain(sets.iter().map(|rs| &**rs));
    // No ReplicaSet, nothing to own or count: leave the pod cache unstarted.
    if sets.is_empty() {
        return Ok(0);
    }
    let pods = api.snapshot("Pod").await?;
    let by_ns = super::by_namespace(&pods);
    let mut acted = 0;
    let started = Instant::now();
    for rs in &sets {
        let rs: &Value = rs;
        if !s(rs, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(rs, started) {
            continue;
        }
        let ns = s(rs, "/metadata/namespace");
        let name = s(rs, "/metadata/name");
        let in_ns = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        let mut plan = match plan(rs, in_ns, chrono::Utc::now()) {
            Ok(p) => p,
            Err(e) => {
                let wait = backoff.failed(rs, started);
                tracing::warn!(replicaset = name, retry_in = ?wait, "{e}");
                continue;
            }
        };
        // The first failure of the pass: (reason, message).
        let mut failure: Option<(&str, String)> = None;
        for pod in &plan.adopt {
            let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": name, "uid": s(rs, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]}});
            match api.patch("Pod", ns, pod, &owner).await {
                Ok(_) => acted += 1,
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    failure
                        .get_or_insert(("FailedAdopt", format!("Error adopting pod {pod}: {e}")));
                }
            }
        }
        let template = pod_from_template(rs);
        let creates = (0..plan.create).map(|_| api.create("Pod", ns, &template));
        for r in futures::future::join_all(creates).await {
            match r {
                Ok(_) => acted += 1,
                Err(e) => {
                    failure.get_or_insert(("FailedCreate", format!("Error creating: {e}")));
                }
            }
        }
        let deletes = plan.delete.iter().map(|p| api.delete("Pod", ns, p));
        for r in futures::future::join_all(deletes).await {
            match r {
                Ok(_) => acted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure.get_or_insert(("FailedDelete", format!("Error deleting: {e}")));
                }
            }
        }
        backoff
            .report(api, "ReplicaSet", COMPONENT, rs, failure.as_ref(), started)
            .await;
        if let Some((reason, message)) = &failure {
            plan.status["conditions"] = json!([failure_condition(reason, message)]);
        }
        let current = rs.get("status").cloned().unwrap_or(Value::Null);
        let fields = [
            "replicas",
            "readyReplicas",
            "availableReplicas",
            "fullyLabeledReplicas",
            "observedGeneration",
            "conditions",
        ];
        // A standing failure condition keeps its first transition time.
        let same_failure = |a: &Value, b: &Value| {
            a.pointer("/0/reason") == b.pointer("/0/reason")
                && a.pointer("/0/message") == b.pointer("/0/message")
        };
        if fields.iter().any(|f| {
            if *f == "conditions" {
                !same_failure(&current[*f], &plan.status[*f])
            } else {
                current[*f] != plan.status[*f]
            }
        }) {
            let mut updated = rs.clone();
            updated["status"] = plan.status.clone();
            if let Err(e) = api.update_status("ReplicaSet", &updated).await {
                tracing::debug!(replicaset = name, "status: {e}");
            }
        }
    }
    Ok(acted)
}

const COMPONENT: &str = "replicaset-controller";

/// Runs passes on the leader whenever the store changes (at most every 100 ms).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(100),
    };
    let mut turns = super::Turns::new("replicaset", node, pace);
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

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "rs-uid", "generation": 2},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn refs(pods: &[Value]) -> Vec<&Value> {
        pods.iter().collect()
    }

    fn pod(name: &str, owner: Option<&str>, node: &str, ready: bool, created: &str) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}, "creationTimestamp": created},
            "spec": {"nodeName": node}, "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"uid": o, "controller": true}]);
        }
        p
    }

    #[test]
    fn scales_up_adopts_and_scales_down_least_valuable_first() {
        let pods = vec![
            pod("a", Some("rs-uid"), "n1", true, "2026-01-01T00:00:01Z"),
            pod("orphan", None, "n1", true, "2026-01-01T00:00:02Z"),
            pod(
                "other",
                Some("someone-else"),
                "n1",
                true,
                "2026-01-01T00:00:03Z",
            ),
        ];
        let p = plan(&rs(4), &refs(&pods), chrono::Utc::now()).expect("plan");
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["observedGeneration"], 2);
        let pods = vec![
            pod(
                "old-ready",
                Some("rs-uid"),
                "n1",
                true,
                "2026-01-01T00:00:01Z",
            ),
            pod(
                "new-ready",
                Some("rs-uid"),
                "n1",
                true,
                "2026-01-01T00:00:05Z",
            ),
            pod(
                "not-ready",
                Some("rs-uid"),
                "n1",
                false,
                "2026-01-01T00:00:02Z",
            ),
            pod(
                "unscheduled",
                Some("rs-uid"),
                "",
                false,
                "2026-01-01T00:00:03Z",
            ),
        ];
        let p = plan(&rs(1), &refs(&pods), chrono::Utc::now()).expect("plan");
        assert_eq!(p.delete, vec!["unscheduled", "not-ready", "new-ready"]);
        assert_eq!(p.create, 0);
        assert_eq!(p.status["readyReplicas"], 2);
    }

    /// A real pass through the shared caches over an API whose pod creates fail.
    #[tokio::test]
    async fn failed_creates_back_off_with_an_event_and_a_condition() {
        use crate::controllers::backoff::BASE;
        use crate::controllers::fake::FakeApi;
        let api = FakeApi::default();
        api.create("ReplicaSet", "default", &rs(3))
            .await
            .expect("rs");
        let cached = api.cached();
        let mut backoff = Backoff::default();
        api.fail_creates("Pod", Some("exceeded quota: pods=10"));
        reconcile_all(&cached, &mut backoff).await.expect("pass");
        let events = api.objects("Event");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["reason"], "FailedCreate");
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            s(&events[0], "/message").contains("exceeded quota"),
            "{}",
            events[0]
        );
        let set = &api.objects("ReplicaSet")[0];
        assert_eq!(set["status"]["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(set["status"]["conditions"][0]["reason"], "FailedCreate");
        assert_eq!(backoff.len(), 1);
        // Within the back-off a pass leaves it alone: no retry, no second event.
        let writes = api.writes().len();
        reconcile_all(&cached, &mut backoff).await.expect("pass");
        assert_eq!(api.writes().len(), writes);
        // Once creates work and the back-off has passed: pods made, condition cleared.
        api.fail_creates("Pod", None);
        tokio::time::sleep(BASE).await;
        reconcile_all(&cached, &mut backoff).await.expect("pass");
        assert_eq!(api.objects("Pod").len(), 3);
        assert!(backoff.is_empty());
        let set = &api.objects("ReplicaSet")[0];
        assert!(set["status"]["conditions"].is_null(), "{set}");
        // And nothing more: the caches show this pass's pods, so no duplicates.
        reconcile_all(&cached, &mut backoff).await.expect("pass");
        assert_eq!(api.objects("Pod").len(), 3);
    }

    #[test]
    fn available_means_ready_for_min_ready_seconds() {
        let mut set = rs(2);
        set["spec"]["minReadySeconds"] = json!(30);
        let mut pods = vec![
            pod("a", Some("rs-uid"), "n1", true, "2026-01-01T00:00:01Z"),
            pod("b", Some("rs-uid"), "n1", true, "2026-01-01T00:00:02Z"),
        ];
        pods[0]["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:00:00Z");
        pods[1]["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:00:50Z");
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let p = plan(&set, &refs(&pods), now).expect("plan");
        assert_eq!(p.status["readyReplicas"], 2);
        assert_eq!(p.status["availableReplicas"], 1);
    }
}
