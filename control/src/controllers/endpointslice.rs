//! EndpointSlices: for every Service with a selector, one EndpointSlice (`<service>-ferry`,
//! labelled `kubernetes.io/service-name`) listing the pods it selects that have an IP, with
//! Kubernetes' conditions: `ready` (pod Ready and not terminating), `serving` (pod Ready, even
//! while terminating) and `terminating` (deletionTimestamp set), plus nodeName and targetRef.
//! Named target ports are resolved against each pod's container ports.
//!
//! Level-triggered on the leader through [`Api`]; slices of Services that are gone or lost their
//! selector are deleted. One slice per Service (Kubernetes splits at 100 endpoints; Ferry will
//! when the datapath needs it).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::client::Api;
use ferry_api::selector::LabelSelector;
use serde_json::{Value, json};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "ferry-endpointslice-controller";

use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

use crate::apiserver::objects::labels;

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The port a pod serves a Service port on: a number, or a named container port.
fn target_port(pod: &Value, port: &Value) -> Option<i64> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// The EndpointSlice a Service should have, given the pods in its namespace (None: the Service
/// has no selector, so it gets no managed slice).
pub fn desired_slice(svc: &Value, pods: &[&Value]) -> Option<Value> {
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())?;
    let selector: BTreeMap<String, String> = selector
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let selector = LabelSelector::from_map(&selector);
    let ns = s(svc, "/metadata/namespace");
    let name = s(svc, "/metadata/name");
    let svc_ports: Vec<Value> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut resolved: Option<Vec<Value>> = None;
    let mut selected: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|p| s(p, "/metadata/namespace") == ns && selector.matches(&labels(p)))
        .filter(|p| !s(p, "/status/podIP").is_empty())
        .filter(|p| !matches!(s(p, "/status/phase"), "Succeeded" | "Failed"))
        .collect();
    selected.sort_by_key(|p| s(p, "/metadata/name").to_string());
    for pod in selected {
        let terminating = !s(pod, "/metadata/deletionTimestamp").is_empty();
        let ready = pod_ready(pod);
        if resolved.is_none() {
            resolved = Some(
                svc_ports
                    .iter()
                    .map(|p| {
                        json!({"name": p["name"].as_str().unwrap_or(""),
                               "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                               "port": target_port(pod, p)})
                    })
                    .collect(),
            );
        }
        let mut ep = json!({
            "addresses": [s(pod, "/status/podIP")],
            "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": s(pod, "/metadata/name"), "uid": s(pod, "/metadata/uid")},
        });
        if !s(pod, "/spec/nodeName").is_empty() {
            ep["nodeName"] = json!(s(pod, "/spec/nodeName"));
        }
        // As Kubernetes: a pod with a hostname in this Service's subdomain (StatefulSet pods)
        // gets `<hostname>.<service>.<ns>.svc` in cluster DNS.
        if !s(pod, "/spec/hostname").is_empty() && s(pod, "/spec/subdomain") == name {
            ep["hostname"] = json!(s(pod, "/spec/hostname"));
        }
        endpoints.push(ep);
    }
    Some(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-ferry"),
            "namespace": ns,
            "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                 "uid": s(svc, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": resolved.unwrap_or_else(|| svc_ports.iter().map(|p| json!({"name": p["name"].as_str().unwrap_or(""), "protocol": p["protocol"].as_str().unwrap_or("TCP"), "port": Value::Null})).collect()),
    }))
}

fn same(a: &Value, b: &Value) -> bool {
    a["endpoints"] == b["endpoints"]
        && a["ports"] == b["ports"]
        && a.pointer("/metadata/labels") == b.pointer("/metadata/labels")
}

/// One pass over every Service. Returns how many slices were written or deleted.
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
) -> Result<usize, ferry_api::client::ClientError> {
    let services = api.snapshot("Service").await?;
    let slices = api.snapshot("EndpointSlice").await?;
    let mut existing: BTreeMap<(String, String), &Value> = slices
        .iter()
        .filter(|sl| sl["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY)
        .map(|sl| {
            let key = (s(sl, "/metadata/namespace"), s(sl, "/metadata/name"));
            ((key.0.to_string(), key.1.to_string()), &**sl)
        })
        .collect();
    // Pods are the big cache: only when some Service selects pods, or slices are left to
    // remove (no Service, no slice: nothing to do, as on a cluster of bare pods).
    let selecting = services.iter().any(|svc| {
        svc.pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    });
    if !selecting && existing.is_empty() {
        return Ok(0);
    }
    let pods = if selecting {
        api.snapshot("Pod").await?
    } else {
        Vec::new()
    };
    let by_ns = super::by_namespace(&pods);
    let mut changed = 0;
    for svc in &services {
        let in_ns = by_ns
            .get(s(svc, "/metadata/namespace"))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(want) = desired_slice(svc, in_ns) else {
            continue;
        };
        let key = (
            s(&want, "/metadata/namespace").to_string(),
            s(&want, "/metadata/name").to_string(),
        );
        match existing.remove(&key) {
            Some(have) if same(have, &want) => {}
            Some(have) => {
                let mut upd = want.clone();
                upd["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"].clone();
                match api.update("EndpointSlice", &upd).await {
                    Ok(_) => changed += 1,
                    Err(e) => tracing::debug!(slice = key.1, "updating endpoints: {e}"),
                }
            }
            None => match api.create("EndpointSlice", &key.0, &want).await {
                Ok(_) => changed += 1,
                Err(e) if e.is_already_exists() => {}
                Err(e) => tracing::debug!(slice = key.1, "creating endpoints: {e}"),
            },
        }
    }
    // Slices whose Service is gone or no longer selects pods.
    for ((ns, name), _) in existing {
        match api.delete("EndpointSlice", &ns, &name).await {
            Ok(_) => changed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(slice = name, "deleting endpoints: {e}"),
        }
    }
    Ok(changed)
}

/// Runs passes on the leader whenever the store changes (at most every 50 ms).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(50),
    };
    super::run_passes("endpointslice", node, pace, || reconcile_all(&api)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, deleting: bool, labels: Value) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn endpoints_carry_kubernetes_conditions_and_resolved_ports() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}});
        let pods = [
            pod("a", "10.244.0.2", true, false, json!({"app": "web"})),
            pod("b", "10.244.0.3", false, false, json!({"app": "web"})),
            pod("c", "10.244.0.4", true, true, json!({"app": "web"})),
            pod("d", "10.244.0.5", true, false, json!({"app": "db"})),
            pod("e", "", true, false, json!({"app": "web"})),
        ];
        let slice = desired_slice(&svc, &pods.iter().collect::<Vec<_>>()).expect("a slice");
        assert_eq!(slice["metadata"]["name"], "web-ferry");
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(
            slice["ports"],
            json!([{"name": "http", "protocol": "TCP", "port": 8080}])
        );
        let eps = slice["endpoints"].as_array().expect("endpoints");
        assert_eq!(eps.len(), 3, "only selected pods with an IP");
        assert_eq!(
            eps[0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(
            eps[1]["conditions"],
            json!({"ready": false, "serving": false, "terminating": false})
        );
        assert_eq!(
            eps[2]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(eps[0]["targetRef"]["name"], "a");
        assert_eq!(eps[0]["nodeName"], "n1");
        assert!(eps[0].get("hostname").is_none());
        // A StatefulSet-style pod in the Service's subdomain gets its hostname published.
        let mut named = pod("db-0", "10.244.0.9", true, false, json!({"app": "web"}));
        named["spec"]["hostname"] = json!("db-0");
        named["spec"]["subdomain"] = json!("web");
        let slice = desired_slice(&svc, &[&named]).expect("a slice");
        assert_eq!(slice["endpoints"][0]["hostname"], "db-0");
        named["spec"]["subdomain"] = json!("other");
        let slice = desired_slice(&svc, &[&named]).expect("a slice");
        assert!(slice["endpoints"][0].get("hostname").is_none());
        let no_selector = json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
        assert!(desired_slice(&no_selector, &pods.iter().collect::<Vec<_>>()).is_none());
    }
}
