//! Authorization: Kubernetes RBAC (Role, ClusterRole, RoleBinding, ClusterRoleBinding) with
//! Kubernetes' matching rules, evaluated against a cache of the RBAC objects.
//!
//! The decision function is pure ([`authorize`]); [`RbacCache`] keeps a snapshot of the four
//! RBAC kinds, rebuilt by a background task whenever the store's history shows a change to one of
//! them (like an informer, so a new binding takes effect within milliseconds, not per request).
//! Members of `system:masters` (cluster administrators) and `system:ferry-members` (the control
//! plane) are allowed everything, as Kubernetes does for `system:masters`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};

use crate::node::Node;
use crate::pki::{GROUP_MASTERS, GROUP_MEMBERS, GROUP_NODES, NODE_USER_PREFIX, UserInfo};

/// The namespace holding node heartbeat Leases (as in Kubernetes).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a node agent's identity names, if it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty() && user.in_group(GROUP_NODES))
}

/// Kubernetes' node authorizer, for what a node agent may do: read nodes and pods; write only
/// its own Node (and status) and its own Lease; write pod status and delete pods (the API server
/// then checks the pod is bound to this node); record events; get the ConfigMaps, Secrets and
/// PVCs that pods bound to it reference, and the PersistentVolumes those PVCs are bound to (the
/// API server checks the reference); get and update the local PersistentVolumes pinned to it,
/// to add or remove their cleanup finalizer only (the API server checks both). Nothing else.
fn node_authorize(node: &str, a: &Attributes) -> Result<(), String> {
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    let own = a.name == node;
    let ok = match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "nodes") => read || (own && matches!(a.verb.as_str(), "create" | "update" | "patch")),
        ("coordination.k8s.io", "leases") => {
            a.namespace == NODE_LEASE_NAMESPACE
                && own
                && matches!(
                    a.verb.as_str(),
                    "get" | "watch" | "create" | "update" | "patch"
                )
        }
        ("", "pods") => {
            (read && a.subresource.is_empty())
                || (a.subresource == "status" && matches!(a.verb.as_str(), "update" | "patch"))
                || (a.subresource.is_empty() && a.verb == "delete")
        }
        ("", "events") => matches!(a.verb.as_str(), "create" | "patch"),
        // Service load balancing and DNS on the node.
        ("", "services") | ("discovery.k8s.io", "endpointslices") => read,
        // Only `get`, and only of objects its pods reference: the API server checks the
        // reference graph (`pod_references`) before answering.
        ("", "configmaps" | "secrets" | "persistentvolumeclaims") => {
            a.verb == "get" && !a.name.is_empty()
        }
        // The accounts its pods run as, and tokens for them bound to those pods (the API
        // server checks both).
        ("", "serviceaccounts") => {
            !a.name.is_empty()
                && ((a.verb == "get" && a.subresource.is_empty())
                    || (a.verb == "create" && a.subresource == "token"))
        }
        ("", "persistentvolumes") => {
            matches!(a.verb.as_str(), "get" | "update")
                && a.subresource.is_empty()
                && !a.name.is_empty()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} (node agents may only change their own Node, their own Lease and the status of pods bound to them)",
            a.forbidden(&UserInfo {
                name: format!("{NODE_USER_PREFIX}{node}"),
                groups: vec![]
            })
        ))
    }
}

/// Every authenticated user is in this group, as in Kubernetes.
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";

/// What a request wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub api_group: String,
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    /// e.g. `status`; empty for the main resource.
    pub subresource: String,
    /// Empty for cluster-scoped resources and for requests across all namespaces.
    pub namespace: String,
    /// Empty for list, watch and create by generateName.
    pub name: String,
}

impl Attributes {
    /// Kubernetes' wording of a refusal.
    pub fn forbidden(&self, user: &UserInfo) -> String {
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let target = if self.name.is_empty() {
            resource.clone()
        } else {
            format!("{resource} \"{}\"", self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{target} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, self.verb, self.api_group
        )
    }
}

/// The RBAC objects, indexed for evaluation.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

impl Snapshot {
    pub fn new(
        cluster_roles: Vec<ClusterRole>,
        roles: Vec<Role>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
        role_bindings: Vec<RoleBinding>,
    ) -> Self {
        Self {
            cluster_roles: cluster_roles
                .into_iter()
                .filter_map(|r| Some((r.metadata.name?, r.rules.unwrap_or_default())))
                .collect(),
            roles: roles
                .into_iter()
                .filter_map(|r| {
                    Some((
                        (r.metadata.namespace?, r.metadata.name?),
                        r.rules.unwrap_or_default(),
                    ))
                })
                .collect(),
            cluster_role_bindings,
            role_bindings,
        }
    }
}

fn subject_matches(s: &Subject, user: &UserInfo, binding_ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => s.name == GROUP_AUTHENTICATED || user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

fn any_subject(subjects: &Option<Vec<Subject>>, user: &UserInfo, binding_ns: &str) -> bool {
    subjects
        .iter()
        .flatten()
        .any(|s| subject_matches(s, user, binding_ns))
}

fn has(list: &Option<Vec<String>>, want: &str) -> bool {
    list.iter().flatten().any(|x| x == "*" || x == want)
}

/// Kubernetes' `RuleAllows` for resource requests.
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    let verb_ok = rule.verbs.iter().any(|v| v == "*" || *v == a.verb);
    let group_ok = has(&rule.api_groups, &a.api_group);
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let names = rule.resource_names.as_deref().unwrap_or_default();
    let name_ok = names.is_empty() || (!a.name.is_empty() && names.contains(&a.name));
    verb_ok && group_ok && resource_ok && name_ok
}

/// Allowed, or the reason it is not.
pub fn authorize(snapshot: &Snapshot, user: &UserInfo, a: &Attributes) -> Result<(), String> {
    if user.in_group(GROUP_MASTERS) || user.in_group(GROUP_MEMBERS) {
        return Ok(());
    }
    if let Some(node) = node_of(user) {
        return node_authorize(node, a);
    }
    let cluster_rules = |name: &str| {
        snapshot
            .cluster_roles
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    for b in &snapshot.cluster_role_bindings {
        if b.role_ref.kind == "ClusterRole"
            && any_subject(&b.subjects, user, "")
            && cluster_rules(&b.role_ref.name)
                .iter()
                .any(|r| rule_allows(r, a))
        {
            return Ok(());
        }
    }
    if !a.namespace.is_empty() {
        for b in &snapshot.role_bindings {
            let ns = b.metadata.namespace.as_deref().unwrap_or("");
            if ns != a.namespace || !any_subject(&b.subjects, user, ns) {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_rules(&b.role_ref.name),
                "Role" => snapshot
                    .roles
                    .get(&(ns.to_string(), b.role_ref.name.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                _ => &[],
            };
            if rules.iter().any(|r| rule_allows(r, a)) {
                return Ok(());
            }
        }
    }
    Err(a.forbidden(user))
}

/// The current RBAC snapshot of this member, kept fresh from the store.
#[derive(Clone, Default)]
pub struct RbacCache {
    inner: Arc<RwLock<Arc<Snapshot>>>,
}

const PREFIXES: [&str; 4] = [
    "/clusterroles/",
    "/roles/",
    "/clusterrolebindings/",
    "/rolebindings/",
];

fn load<T: serde::de::DeserializeOwned>(node: &Node, prefix: &str) -> Vec<T> {
    match node.sm.range(prefix) {
        Ok(r) => r
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_str(&kv.value).ok())
            .collect(),
        Err(e) => {
            tracing::warn!("reading {prefix} for RBAC: {e}");
            Vec::new()
        }
    }
}

impl RbacCache {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn rebuild(&self, node: &Node) {
        let s = Snapshot::new(
            load(node, PREFIXES[0]),
            load(node, PREFIXES[1]),
            load(node, PREFIXES[2]),
            load(node, PREFIXES[3]),
        );
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// Keeps the snapshot in step with the store: rebuilt whenever history shows an RBAC change.
    pub fn start(node: Arc<Node>) -> RbacCache {
        let cache = RbacCache::default();
        cache.rebuild(&node);
        let c = cache.clone();
        tokio::spawn(async move {
            let mut notify = node.sm.subscribe();
            let mut last = node.sm.revision();
            loop {
                if notify.changed().await.is_err() {
                    return;
                }
                loop {
                    match node.sm.events_after(last, 4096) {
                        Ok((events, seen)) => {
                            let touched = events
                                .iter()
                                .any(|e| PREFIXES.iter().any(|p| e.kv.key.starts_with(p)));
                            let full = events.len() >= 4096;
                            last = events.last().map_or(seen, |e| e.revision).max(if full {
                                0
                            } else {
                                seen
                            });
                            if touched {
                                c.rebuild(&node);
                            }
                            if !full {
                                break;
                            }
                        }
                        Err(_) => {
                            // History compacted past us (e.g. a snapshot was installed): rebuild.
                            c.rebuild(&node);
                            last = node.sm.revision();
                            break;
                        }
                    }
                }
            }
        });
        cache
    }
}

/// The ClusterRoles every cluster starts with (Kubernetes' user-facing roles).
pub fn default_cluster_roles() -> Vec<serde_json::Value> {
    let all = serde_json::json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]);
    let read = ["get", "list", "watch"];
    let write = ["create", "update", "patch", "delete"];
    let workloads = serde_json::json!([
        {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "persistentvolumeclaims", "events", "endpoints"], "verbs": read},
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "daemonsets", "statefulsets", "controllerrevisions"], "verbs": read},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
    ]);
    let mut edit = workloads.as_array().cloned().unwrap_or_default();
    for group in [
        (
            "",
            vec![
                "pods",
                "services",
                "configmaps",
                "secrets",
                "persistentvolumeclaims",
            ],
        ),
        (
            "apps",
            vec!["deployments", "replicasets", "daemonsets", "statefulsets"],
        ),
        ("batch", vec!["jobs", "cronjobs"]),
    ] {
        edit.push(
            serde_json::json!({"apiGroups": [group.0], "resources": group.1, "verbs": write}),
        );
    }
    edit.push(serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": read}));
    let role = |name: &str, rules: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": rules,
        })
    };
    vec![
        role("cluster-admin", all),
        role(
            "admin",
            serde_json::json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        ),
        role("edit", serde_json::Value::Array(edit)),
        role("view", workloads),
    ]
}

/// Whether `pod` references the object `kind`/`name` (in its own namespace): volumes, projected
/// sources, env `valueFrom`, `envFrom` and image pull secrets, as Kubernetes' node graph does.
pub fn pod_references(pod: &serde_json::Value, kind: &str, name: &str) -> bool {
    use serde_json::Value;
    let eq = |v: &Value| v.as_str() == Some(name);
    let spec = &pod["spec"];
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .collect();
    let projected = |v: &Value, src: &str| {
        v["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| eq(&s[src]["name"]))
    };
    let env_ref = |c: &Value, key_ref: &str, from_ref: &str| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| eq(&e["valueFrom"][key_ref]["name"]))
            || c["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| eq(&e[from_ref]["name"]))
    };
    match kind {
        "ConfigMap" => {
            volumes
                .iter()
                .any(|v| eq(&v["configMap"]["name"]) || projected(v, "configMap"))
                || containers
                    .iter()
                    .any(|c| env_ref(c, "configMapKeyRef", "configMapRef"))
        }
        "Secret" => {
            volumes
                .iter()
                .any(|v| eq(&v["secret"]["secretName"]) || projected(v, "secret"))
                || containers
                    .iter()
                    .any(|c| env_ref(c, "secretKeyRef", "secretRef"))
                || spec["imagePullSecrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| eq(&s["name"]))
        }
        "PersistentVolumeClaim" => volumes
            .iter()
            .any(|v| eq(&v["persistentVolumeClaim"]["claimName"])),
        "ServiceAccount" => {
            spec["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                == name
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn snapshot() -> Snapshot {
        let roles: Vec<ClusterRole> = default_cluster_roles()
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("valid ClusterRole"))
            .collect();
        let pod_reader: Role = serde_json::from_value(json!({
            "metadata": {"name": "pod-reader", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "list"]},
                      {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"], "resourceNames": ["only-this"]}]
        }))
        .expect("role");
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "alice-reads", "namespace": "dev"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "User", "name": "alice"}]
        }))
        .expect("binding");
        let team_view: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "team-view", "namespace": "prod"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "team"}]
        }))
        .expect("binding");
        let ops: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "ops-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "olga"}]
        }))
        .expect("binding");
        Snapshot::new(roles, vec![pod_reader], vec![ops], vec![rb, team_view])
    }

    #[test]
    fn node_agents_may_get_and_update_but_never_list_or_delete_volumes() {
        let s = snapshot();
        let n1 = user("system:node:n1", &[GROUP_NODES]);
        // The API server then checks the pod -> claim -> volume graph or that the volume is
        // pinned to the node, and that an update only changes the cleanup finalizer.
        assert!(authorize(&s, &n1, &attrs("get", "", "persistentvolumes", "", "pv1")).is_ok());
        assert!(
            authorize(
                &s,
                &n1,
                &attrs("update", "", "persistentvolumes", "", "pv1")
            )
            .is_ok()
        );
        assert!(authorize(&s, &n1, &attrs("list", "", "persistentvolumes", "", "")).is_err());
        for verb in ["delete", "patch", "create"] {
            assert!(
                authorize(&s, &n1, &attrs(verb, "", "persistentvolumes", "", "pv1")).is_err(),
                "{verb}"
            );
        }
        assert!(
            authorize(
                &s,
                &n1,
                &attrs("delete", "", "persistentvolumeclaims", "default", "c")
            )
            .is_err()
        );
    }

    #[test]
    fn node_agents_may_write_only_their_own_node_and_lease() {
        let s = snapshot();
        let n1 = user("system:node:n1", &[GROUP_NODES]);
        assert!(authorize(&s, &n1, &attrs("update", "", "nodes", "", "n1")).is_ok());
        assert!(authorize(&s, &n1, &attrs("update", "", "nodes", "", "n2")).is_err());
        assert!(authorize(&s, &n1, &attrs("list", "", "nodes", "", "")).is_ok());
        assert!(authorize(&s, &n1, &attrs("delete", "", "nodes", "", "n1")).is_err());
        assert!(
            authorize(
                &s,
                &n1,
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    NODE_LEASE_NAMESPACE,
                    "n1"
                )
            )
            .is_ok()
        );
        assert!(
            authorize(
                &s,
                &n1,
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    NODE_LEASE_NAMESPACE,
                    "n2"
                )
            )
            .is_err()
        );
        assert!(
            authorize(
                &s,
                &n1,
                &attrs("update", "coordination.k8s.io", "leases", "default", "n1")
            )
            .is_err()
        );
        let mut status = attrs("update", "", "pods", "default", "p");
        status.subresource = "status".into();
        assert!(authorize(&s, &n1, &status).is_ok());
        assert!(
            authorize(&s, &n1, &attrs("update", "", "pods", "default", "p")).is_err(),
            "not the spec"
        );
        assert!(
            authorize(&s, &n1, &attrs("list", "", "secrets", "default", "")).is_err(),
            "never list"
        );
        assert!(authorize(&s, &n1, &attrs("update", "", "secrets", "default", "s")).is_err());
        assert!(authorize(&s, &n1, &attrs("create", "", "events", "default", "")).is_ok());
        // A CN that looks like a node without the group is just a user.
        assert!(
            authorize(
                &s,
                &user("system:node:n1", &[]),
                &attrs("update", "", "nodes", "", "n1")
            )
            .is_err()
        );
    }

    #[test]
    fn pod_references_follow_kubernetes_node_graph() {
        let pod = json!({"spec": {
            "volumes": [{"name": "a", "configMap": {"name": "cm-vol"}}, {"name": "b", "secret": {"secretName": "sec-vol"}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "d", "projected": {"sources": [{"secret": {"name": "sec-proj"}}]}}],
            "containers": [{"name": "x", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "cm-from"}}]}],
            "imagePullSecrets": [{"name": "regcred"}]}});
        for (k, n) in [
            ("ConfigMap", "cm-vol"),
            ("ConfigMap", "cm-from"),
            ("Secret", "sec-vol"),
            ("Secret", "sec-proj"),
            ("Secret", "sec-env"),
            ("Secret", "regcred"),
            ("PersistentVolumeClaim", "data"),
        ] {
            assert!(pod_references(&pod, k, n), "{k}/{n}");
        }
        assert!(!pod_references(&pod, "Secret", "cm-vol"));
        assert!(!pod_references(&pod, "ConfigMap", "other"));
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let s = snapshot();
        let alice = user("alice", &[]);
        assert!(authorize(&s, &alice, &attrs("get", "", "pods", "dev", "p")).is_ok());
        assert!(authorize(&s, &alice, &attrs("list", "", "pods", "dev", "")).is_ok());
        assert!(authorize(&s, &alice, &attrs("get", "", "pods", "prod", "p")).is_err());
        assert!(
            authorize(&s, &alice, &attrs("list", "", "pods", "", "")).is_err(),
            "not across namespaces"
        );
        assert!(authorize(&s, &alice, &attrs("delete", "", "pods", "dev", "p")).is_err());
        let err = authorize(
            &s,
            &alice,
            &attrs("create", "apps", "deployments", "dev", ""),
        )
        .expect_err("denied");
        assert_eq!(
            err,
            "deployments is forbidden: User \"alice\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"dev\""
        );
    }

    #[test]
    fn subresources_resource_names_groups_and_cluster_bindings() {
        let s = snapshot();
        let alice = user("alice", &[]);
        let mut status = attrs("get", "", "pods", "dev", "p");
        status.subresource = "status".into();
        assert!(authorize(&s, &alice, &status).is_ok());
        status.verb = "update".into();
        assert!(authorize(&s, &alice, &status).is_err());
        assert!(
            authorize(
                &s,
                &alice,
                &attrs("update", "", "configmaps", "dev", "only-this")
            )
            .is_ok()
        );
        assert!(
            authorize(
                &s,
                &alice,
                &attrs("update", "", "configmaps", "dev", "other")
            )
            .is_err()
        );
        let bob = user("bob", &["team"]);
        assert!(authorize(&s, &bob, &attrs("watch", "apps", "deployments", "prod", "")).is_ok());
        assert!(
            authorize(&s, &bob, &attrs("get", "", "secrets", "prod", "s")).is_err(),
            "view excludes secrets"
        );
        let olga = user("olga", &[]);
        assert!(
            authorize(
                &s,
                &olga,
                &attrs("delete", "apps", "deployments", "any", "d")
            )
            .is_ok()
        );
        assert!(authorize(&s, &olga, &attrs("delete", "", "nodes", "", "n1")).is_err());
        assert!(
            authorize(
                &s,
                &user("root", &[GROUP_MASTERS]),
                &attrs("delete", "", "nodes", "", "n")
            )
            .is_ok()
        );
        assert!(
            authorize(
                &s,
                &user("nobody", &[]),
                &attrs("get", "", "pods", "dev", "p")
            )
            .is_err()
        );
    }
}
