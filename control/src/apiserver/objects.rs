//! Resource-generic object handling for the API server: storage keys, metadata that the server
//! owns (uid, resourceVersion, generation, timestamps), status/spec separation and merge patches.
//! Pure functions over `serde_json::Value`, unit-tested without a store.

use std::collections::BTreeMap;

use ferry_api::kinds::KindInfo;
use rand::Rng;
use serde_json::{Map, Value};

/// Largest object the store accepts (etcd's default request limit).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// `/{plural}/{namespace}/{name}` for namespaced kinds, `/{plural}/{name}` otherwise.
pub fn key(info: &KindInfo, namespace: &str, name: &str) -> String {
    if info.namespaced {
        format!("/{}/{}/{}", info.plural, namespace, name)
    } else {
        format!("/{}/{}", info.plural, name)
    }
}

/// The key prefix holding every object of a kind, optionally in one namespace.
pub fn prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("/{}/{}/", info.plural, ns),
        _ => format!("/{}/", info.plural),
    }
}

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The metadata map, created if absent.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj
        .as_object_mut()
        .expect("objects are JSON objects (checked on decode)");
    let m = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("just made an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    metadata(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    metadata(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses stored JSON and stamps `metadata.resourceVersion` with the store's mod revision.
pub fn from_store(value: &str, mod_revision: u64) -> Result<Value, serde_json::Error> {
    let mut obj: Value = serde_json::from_str(value)?;
    if obj.is_object() {
        metadata_mut(&mut obj).insert(
            "resourceVersion".into(),
            Value::String(mod_revision.to_string()),
        );
    }
    Ok(obj)
}

/// The stored form: resourceVersion is implied by the store's revision and never stored.
pub fn to_store(obj: &Value) -> String {
    let mut obj = obj.clone();
    if obj.is_object() {
        metadata_mut(&mut obj).remove("resourceVersion");
    }
    obj.to_string()
}

/// `generateName` plus five random characters, as Kubernetes does: a prefix longer than 58
/// characters is cut to 58, so the name stays a valid DNS label (a ReplicaSet with a long name
/// still gets pods).
pub fn generated_name(prefix: &str) -> String {
    const MAX_PREFIX: usize = 63 - 5;
    let prefix = match prefix.char_indices().nth(MAX_PREFIX) {
        Some((cut, _)) => &prefix[..cut],
        None => prefix,
    };
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Server-owned metadata for a new object.
pub fn prepare_create(info: &KindInfo, obj: &mut Value) {
    let uid = uuid::Uuid::new_v4().to_string();
    let m = metadata_mut(obj);
    m.insert("uid".into(), Value::String(uid));
    m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    m.insert("generation".into(), Value::from(1));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    if !info.namespaced {
        m.remove("namespace");
    }
    // Status is the system's to write; a new object starts with the kind's initial status.
    let root = obj.as_object_mut().expect("object");
    root.remove("status");
    match info.kind {
        "Namespace" => {
            root.insert("status".into(), serde_json::json!({"phase": "Active"}));
        }
        "Pod" => {
            root.insert("status".into(), serde_json::json!({"phase": "Pending"}));
            // Kubernetes' ServiceAccount admission: a pod runs as `default` unless it names an
            // account.
            if let Some(spec) = root.get_mut("spec").and_then(Value::as_object_mut) {
                let named = spec
                    .get("serviceAccountName")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .or_else(|| spec.get("serviceAccount").and_then(Value::as_str))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    .to_string();
                spec.insert("serviceAccountName".into(), Value::from(named));
            }
        }
        // Kubernetes' StorageObjectInUseProtection admission: a claim in use is not deleted
        // under its pods, nor a volume under its claim (the volume binding controller removes
        // the finalizers once unused).
        "PersistentVolumeClaim" | "PersistentVolume" => {
            let finalizer = if info.kind == "PersistentVolume" {
                ferry_api::volumes::PV_PROTECTION
            } else {
                ferry_api::volumes::PVC_PROTECTION
            };
            let m = metadata_mut(obj);
            let fins = m
                .entry("finalizers")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = fins
                && !list.iter().any(|f| f == finalizer)
            {
                list.push(Value::from(finalizer));
            }
        }
        _ => {}
    }
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// Everything but status.
    Main,
    /// Only status.
    Status,
    /// A pod's `binding` (Kubernetes' `pods/binding`): `spec.nodeName` and the PodScheduled
    /// condition in one write, as the scheduler binds.
    Binding,
}

/// The pod `old` bound to `node` at `now`: `spec.nodeName` set and the PodScheduled condition
/// True (replacing any earlier one). `Err` names why it cannot be bound.
pub fn bind_pod(old: &Value, node: &str, now: &str) -> Result<Value, String> {
    if node.is_empty() {
        return Err("target.name: Required value: the node to bind to".into());
    }
    if let Some(on) = old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(format!(
            "pod {} is already assigned to node {on:?}",
            meta_str(old, "name")
        ));
    }
    if !meta_str(old, "deletionTimestamp").is_empty() {
        return Err(format!("pod {} is being deleted", meta_str(old, "name")));
    }
    let mut new = old.clone();
    new["spec"]["nodeName"] = Value::String(node.to_string());
    prepare_update(old, &mut new, Subresource::Main);
    let mut conditions: Vec<Value> = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(serde_json::json!({"type": "PodScheduled", "status": "True",
                                       "lastTransitionTime": now}));
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = serde_json::json!({});
    }
    new["status"]["conditions"] = Value::Array(conditions);
    Ok(new)
}

/// Merges an update onto the stored object following Kubernetes' rules: identity and creation
/// metadata are kept; the main resource cannot change status and the status subresource cannot
/// change anything else; generation increments when the spec changes; deletionTimestamp can
/// only be set by delete.
pub fn prepare_update(old: &Value, new: &mut Value, sub: Subresource) {
    if sub == Subresource::Status {
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        let root = merged.as_object_mut().expect("object");
        match status {
            Some(s) => root.insert("status".into(), s),
            None => root.remove("status"),
        };
        *new = merged;
        return;
    }
    let old_meta = metadata(old).cloned().unwrap_or_default();
    let spec_changed = spec_part(old) != spec_part(new);
    {
        let m = metadata_mut(new);
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        let old_gen = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        m.insert(
            "generation".into(),
            Value::from(if spec_changed { old_gen + 1 } else { old_gen }),
        );
        m.remove("resourceVersion");
    }
    let root = new.as_object_mut().expect("object");
    match old.get("status") {
        Some(s) => root.insert("status".into(), s.clone()),
        None => root.remove("status"),
    };
}

/// Whether `obj` still waits for a finalizer: `metadata.finalizers`, and for a Namespace also
/// `spec.finalizers` (the namespace controller's `kubernetes`).
pub fn finalizers_pending(info: &KindInfo, obj: &Value) -> bool {
    !finalizers(obj).is_empty()
        || (info.kind == "Namespace"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()))
}

/// What a delete request's propagationPolicy adds to an object not yet being deleted, as in
/// Kubernetes: `Foreground` the `foregroundDeletion` finalizer (the garbage collector deletes
/// the blocking dependents first), `Orphan` the `orphan` finalizer (the collector removes the
/// dependents' ownerReferences first). A Namespace always becomes `Terminating` with the
/// `kubernetes` finalizer in `spec.finalizers`, which the namespace controller removes once the
/// namespace is empty. Pods are left alone (they have their own graceful deletion).
pub fn mark_propagation(info: &KindInfo, obj: &mut Value, policy: &str) {
    if info.kind == "Namespace" {
        let spec = obj
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        if !spec.is_object() {
            *spec = Value::Object(Default::default());
        }
        let fins = spec
            .as_object_mut()
            .expect("object")
            .entry("finalizers")
            .or_insert_with(|| Value::Array(vec![]));
        if let Some(a) = fins.as_array_mut()
            && !a.iter().any(|f| f == "kubernetes")
        {
            a.push(Value::from("kubernetes"));
        }
        obj["status"] = serde_json::json!({"phase": "Terminating"});
        return;
    }
    let finalizer = match policy {
        "Foreground" if info.kind != "Pod" => "foregroundDeletion",
        "Orphan" if info.kind != "Pod" => "orphan",
        _ => return,
    };
    let m = metadata_mut(obj);
    let fins = m
        .entry("finalizers")
        .or_insert_with(|| Value::Array(vec![]));
    if let Some(a) = fins.as_array_mut()
        && !a.iter().any(|f| f == finalizer)
    {
        a.push(Value::from(finalizer));
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

#[cfg(test)]
mod tests {

    #[test]
    fn binding_sets_the_node_and_the_condition_once() {
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "default", "uid": "u",
            "resourceVersion": "7"}, "spec": {"containers": []},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable"}]}});
        let bound = bind_pod(&pod, "n1", "2026-01-01T00:00:00Z").expect("bound");
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(bound["status"]["phase"], "Pending");
        assert_eq!(
            bound["status"]["conditions"],
            serde_json::json!([{"type": "PodScheduled", "status": "True",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        );
        assert!(bound["metadata"].get("resourceVersion").is_none());
        let again = bind_pod(&bound, "n2", "2026-01-01T00:00:01Z").expect_err("bound already");
        assert!(again.contains("already assigned to node \"n1\""), "{again}");
        assert!(bind_pod(&pod, "", "t").is_err());
    }
    use serde_json::json;

    use super::*;

    fn info(kind: &str) -> &'static KindInfo {
        ferry_api::kinds::lookup(kind).expect("known kind")
    }

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(key(info("Pod"), "default", "web"), "/pods/default/web");
        assert_eq!(key(info("Node"), "", "n1"), "/nodes/n1");
        assert_eq!(prefix(info("Pod"), Some("kube")), "/pods/kube/");
        assert_eq!(prefix(info("Pod"), None), "/pods/");
        assert_eq!(prefix(info("Node"), Some("x")), "/nodes/");
    }

    #[test]
    fn resource_version_is_never_stored_but_always_served() {
        let obj = json!({"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "7"}});
        let stored = to_store(&obj);
        assert!(!stored.contains("resourceVersion"));
        let served = from_store(&stored, 42).expect("parses");
        assert_eq!(served["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn create_sets_server_metadata_and_initial_status() {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p", "resourceVersion": "9"}, "status": {"phase": "Running"}});
        prepare_create(info("Pod"), &mut pod);
        assert_eq!(pod["metadata"]["generation"], 1);
        assert!(
            pod["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );
        assert!(pod["metadata"].get("resourceVersion").is_none());
        assert_eq!(pod["status"]["phase"], "Pending");
        let mut node = json!({"kind": "Node", "metadata": {"name": "n", "namespace": "x"}});
        prepare_create(info("Node"), &mut node);
        assert!(node["metadata"].get("namespace").is_none());
    }

    #[test]
    fn update_bumps_generation_only_on_spec_change_and_keeps_status() {
        let old = json!({"metadata": {"name": "d", "uid": "u1", "generation": 3, "creationTimestamp": "t"},
                         "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut same = json!({"metadata": {"name": "d", "uid": "evil", "labels": {"a": "b"}},
                              "spec": {"replicas": 1}, "status": {"replicas": 99}});
        prepare_update(&old, &mut same, Subresource::Main);
        assert_eq!(same["metadata"]["generation"], 3);
        assert_eq!(same["metadata"]["uid"], "u1");
        assert_eq!(same["metadata"]["creationTimestamp"], "t");
        assert_eq!(
            same["status"]["replicas"], 1,
            "main update cannot change status"
        );
        assert_eq!(same["metadata"]["labels"]["a"], "b");
        let mut scaled = json!({"metadata": {"name": "d"}, "spec": {"replicas": 5}});
        prepare_update(&old, &mut scaled, Subresource::Main);
        assert_eq!(scaled["metadata"]["generation"], 4);
        let mut status =
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 7}, "status": {"replicas": 2}});
        prepare_update(&old, &mut status, Subresource::Status);
        assert_eq!(
            status["spec"]["replicas"], 1,
            "status update cannot change spec"
        );
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["metadata"]["generation"], 3);
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn generated_names_have_the_prefix_and_five_chars() {
        let n = generated_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9);
        let long = format!("{}-", "a".repeat(70));
        let n = generated_name(&long);
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&"a".repeat(58)));
    }

    #[test]
    fn propagation_policies_add_finalizers() {
        let mut rs = json!({"metadata": {"name": "rs", "finalizers": ["x"]}});
        mark_propagation(info("ReplicaSet"), &mut rs, "Foreground");
        mark_propagation(info("ReplicaSet"), &mut rs, "Foreground");
        assert_eq!(
            rs["metadata"]["finalizers"],
            json!(["x", "foregroundDeletion"])
        );
        let mut rs = json!({"metadata": {"name": "rs"}});
        mark_propagation(info("ReplicaSet"), &mut rs, "Background");
        assert!(!finalizers_pending(info("ReplicaSet"), &rs));
        mark_propagation(info("ReplicaSet"), &mut rs, "Orphan");
        assert_eq!(rs["metadata"]["finalizers"], json!(["orphan"]));
        let mut pod = json!({"metadata": {"name": "p"}});
        mark_propagation(info("Pod"), &mut pod, "Orphan");
        assert!(!finalizers_pending(info("Pod"), &pod));
        let mut ns = json!({"metadata": {"name": "t"}, "status": {"phase": "Active"}});
        mark_propagation(info("Namespace"), &mut ns, "");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(finalizers_pending(info("Namespace"), &ns));
        ns["spec"]["finalizers"] = json!([]);
        assert!(!finalizers_pending(info("Namespace"), &ns));
    }
}
