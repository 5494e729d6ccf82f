//! The kind registry: which resource kinds Ferry serves and how they are named.
//!
//! Owns the static table of supported kinds (kind, apiVersion, plural, singular, kubectl short
//! names, scope) and name resolution for CLI arguments (`po`, `deploy`, `deployments.apps`).
//! It never touches the resource bodies; typed decoding lives in [`crate::strict`].

/// Static description of one supported kind.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KindInfo {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
}

impl KindInfo {
    /// The list kind, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The API group: `""` for the core group, else e.g. `apps`.
    pub fn group(&self) -> &'static str {
        match self.api_version.rsplit_once('/') {
            Some((g, _)) => g,
            None => "",
        }
    }

    /// The version part of apiVersion, e.g. `v1`.
    pub fn version(&self) -> &'static str {
        match self.api_version.rsplit_once('/') {
            Some((_, v)) => v,
            None => self.api_version,
        }
    }

    /// `plural.group` (or just `plural` for the core group), as `kubectl api-resources` prints it.
    pub fn qualified_plural(&self) -> String {
        match self.group() {
            "" => self.plural.to_string(),
            g => format!("{}.{g}", self.plural),
        }
    }
}

macro_rules! kind {
    ($kind:literal, $av:literal, $plural:literal, $singular:literal, [$($short:literal),*], $ns:literal) => {
        KindInfo {
            kind: $kind,
            api_version: $av,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: $ns,
        }
    };
}

static KINDS: &[KindInfo] = &[
    kind!("Namespace", "v1", "namespaces", "namespace", ["ns"], false),
    kind!("Node", "v1", "nodes", "node", ["no"], false),
    kind!("Pod", "v1", "pods", "pod", ["po"], true),
    kind!("ConfigMap", "v1", "configmaps", "configmap", ["cm"], true),
    kind!("Secret", "v1", "secrets", "secret", [], true),
    kind!("Service", "v1", "services", "service", ["svc"], true),
    kind!("Event", "v1", "events", "event", ["ev"], true),
    kind!(
        "ServiceAccount",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        ["sa"],
        true
    ),
    kind!(
        "PersistentVolume",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        ["pv"],
        false
    ),
    kind!(
        "PersistentVolumeClaim",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        ["pvc"],
        true
    ),
    kind!(
        "ReplicaSet",
        "apps/v1",
        "replicasets",
        "replicaset",
        ["rs"],
        true
    ),
    kind!(
        "Deployment",
        "apps/v1",
        "deployments",
        "deployment",
        ["deploy"],
        true
    ),
    kind!(
        "DaemonSet",
        "apps/v1",
        "daemonsets",
        "daemonset",
        ["ds"],
        true
    ),
    kind!(
        "StatefulSet",
        "apps/v1",
        "statefulsets",
        "statefulset",
        ["sts"],
        true
    ),
    kind!(
        "ControllerRevision",
        "apps/v1",
        "controllerrevisions",
        "controllerrevision",
        [],
        true
    ),
    kind!("Job", "batch/v1", "jobs", "job", [], true),
    kind!("CronJob", "batch/v1", "cronjobs", "cronjob", ["cj"], true),
    kind!(
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "endpointslices",
        "endpointslice",
        [],
        true
    ),
    kind!(
        "Lease",
        "coordination.k8s.io/v1",
        "leases",
        "lease",
        [],
        true
    ),
    kind!(
        "Role",
        "rbac.authorization.k8s.io/v1",
        "roles",
        "role",
        [],
        true
    ),
    kind!(
        "ClusterRole",
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "clusterrole",
        [],
        false
    ),
    kind!(
        "RoleBinding",
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "rolebinding",
        [],
        true
    ),
    kind!(
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "clusterrolebinding",
        [],
        false
    ),
];

/// Every supported kind, in a stable order (core first).
pub fn all() -> &'static [KindInfo] {
    KINDS
}

fn matches_name(k: &KindInfo, name: &str) -> bool {
    k.kind.eq_ignore_ascii_case(name)
        || k.plural.eq_ignore_ascii_case(name)
        || k.singular.eq_ignore_ascii_case(name)
        || k.short_names.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Resolve a resource name as kubectl does, case-insensitively: kind (`Pod`), plural (`pods`),
/// singular (`pod`), short name (`po`), or group-qualified (`deployments.apps`,
/// `deployments.v1.apps`; core-group kinds are only matched unqualified).
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Some(k) = KINDS.iter().find(|k| matches_name(k, name)) {
        return Some(k);
    }
    // Group-qualified: `resource.group` or `resource.version.group`.
    let (resource, rest) = name.split_once('.')?;
    KINDS.iter().find(|k| {
        if k.group().is_empty() || !matches_name(k, resource) {
            return false;
        }
        if rest.eq_ignore_ascii_case(k.group()) {
            return true;
        }
        match rest.split_once('.') {
            Some((ver, group)) => {
                ver.eq_ignore_ascii_case(k.version()) && group.eq_ignore_ascii_case(k.group())
            }
            None => false,
        }
    })
}

/// Exact (case-sensitive, as the API is) lookup by apiVersion and kind.
pub fn lookup_api(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// Exact (case-sensitive) lookup by kind alone, whatever the apiVersion.
pub fn lookup_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for k in all() {
            assert!(seen.insert(k.plural), "duplicate plural {}", k.plural);
            assert_eq!(k.singular, k.kind.to_ascii_lowercase());
            assert!(k.plural.starts_with(k.singular) || k.plural.ends_with('s'));
            assert_eq!(lookup_api(k.api_version, k.kind), Some(k));
            assert_eq!(lookup(k.plural), Some(k));
            for s in k.short_names {
                assert_eq!(lookup(s), Some(k), "short name {s}");
            }
        }
        assert_eq!(all().len(), 23);
    }

    #[test]
    fn lookup_names() {
        assert_eq!(lookup("Pod").map(|k| k.kind), Some("Pod"));
        assert_eq!(lookup("pods").map(|k| k.kind), Some("Pod"));
        assert_eq!(lookup("PO").map(|k| k.kind), Some("Pod"));
        assert_eq!(lookup("deploy").map(|k| k.kind), Some("Deployment"));
        assert_eq!(lookup("rs").map(|k| k.kind), Some("ReplicaSet"));
        assert_eq!(lookup("ds").map(|k| k.kind), Some("DaemonSet"));
        assert_eq!(lookup("sts").map(|k| k.kind), Some("StatefulSet"));
        assert_eq!(lookup("svc").map(|k| k.kind), Some("Service"));
        assert_eq!(lookup("cm").map(|k| k.kind), Some("ConfigMap"));
        assert_eq!(lookup("ns").map(|k| k.kind), Some("Namespace"));
        assert_eq!(lookup("no").map(|k| k.kind), Some("Node"));
        assert_eq!(lookup("pv").map(|k| k.kind), Some("PersistentVolume"));
        assert_eq!(lookup("pvc").map(|k| k.kind), Some("PersistentVolumeClaim"));
        assert_eq!(lookup("cj").map(|k| k.kind), Some("CronJob"));
        assert_eq!(lookup("ev").map(|k| k.kind), Some("Event"));
        assert_eq!(
            lookup("endpointslices").map(|k| k.kind),
            Some("EndpointSlice")
        );
        assert_eq!(
            lookup("clusterrolebinding").map(|k| k.kind),
            Some("ClusterRoleBinding")
        );
        assert!(lookup("").is_none());
        assert!(lookup("widgets").is_none());
    }

    #[test]
    fn lookup_group_qualified() {
        assert_eq!(
            lookup("deployments.apps").map(|k| k.kind),
            Some("Deployment")
        );
        assert_eq!(
            lookup("deployment.apps").map(|k| k.kind),
            Some("Deployment")
        );
        assert_eq!(
            lookup("deployments.v1.apps").map(|k| k.kind),
            Some("Deployment")
        );
        assert_eq!(lookup("cronjobs.batch").map(|k| k.kind), Some("CronJob"));
        assert_eq!(
            lookup("leases.coordination.k8s.io").map(|k| k.kind),
            Some("Lease")
        );
        assert_eq!(
            lookup("roles.rbac.authorization.k8s.io").map(|k| k.kind),
            Some("Role")
        );
        assert!(lookup("deployments.batch").is_none());
        assert!(lookup("deployments.v2.apps").is_none());
        assert!(lookup("pods.apps").is_none());
    }

    #[test]
    fn api_lookup_is_exact() {
        assert!(lookup_api("apps/v1", "Deployment").is_some());
        assert!(lookup_api("apps/v2", "Deployment").is_none());
        assert!(lookup_api("v1", "pod").is_none());
        assert_eq!(
            lookup_kind("Deployment").map(|k| k.api_version),
            Some("apps/v1")
        );
        let d = lookup("deploy").unwrap();
        assert_eq!(d.list_kind(), "DeploymentList");
        assert_eq!(d.group(), "apps");
        assert_eq!(d.version(), "v1");
        assert_eq!(d.qualified_plural(), "deployments.apps");
        let p = lookup("po").unwrap();
        assert_eq!(p.group(), "");
        assert_eq!(p.version(), "v1");
        assert_eq!(p.qualified_plural(), "pods");
    }
}
