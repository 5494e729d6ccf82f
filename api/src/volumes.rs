//! Storage names shared by the control plane and the agents: the finalizers that protect claims
//! in use and local volumes whose data is still on a node, and where a local volume lives.

use serde_json::Value;

/// Kubernetes' finalizer on every PersistentVolumeClaim: removed (and the claim deleted) only
/// once no pod that is not finished uses the claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// Kubernetes' finalizer on every PersistentVolume: removed (and the volume deleted) only once
/// it is not Bound to a claim.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// On a PersistentVolume of the local provisioner whose directory exists on its node: the
/// node's agent removes the directory, then this finalizer, when the volume is deleted.
pub const LOCAL_VOLUME_CLEANUP: &str = "ferry.dev/local-volume-cleanup";

/// Whether `pv` is pinned to node `node`: its required node affinity has terms, and each needs
/// `kubernetes.io/hostname` In a list naming the node (as the local provisioner writes it).
pub fn pinned_to(pv: &Value, node: &str) -> bool {
    let Some(terms) = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    terms.iter().all(|t| {
        t["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["key"] == "kubernetes.io/hostname"
                    && e["operator"] == "In"
                    && e["values"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v == node))
            })
    })
}

/// The finalizers of `obj`.
pub fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pinned_only_by_a_hostname_term_naming_the_node() {
        let pv = |terms: Value| json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": terms}}}});
        let on = |n: &str| json!([{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]);
        assert!(pinned_to(&pv(on("n1")), "n1"));
        assert!(!pinned_to(&pv(on("n2")), "n1"));
        assert!(!pinned_to(&pv(json!([])), "n1"));
        assert!(!pinned_to(&json!({"spec": {}}), "n1"));
        let zone =
            json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]);
        assert!(!pinned_to(&pv(zone), "n1"));
        assert_eq!(
            finalizers(&json!({"metadata": {"finalizers": ["a", "b"]}})),
            ["a", "b"]
        );
    }
}
