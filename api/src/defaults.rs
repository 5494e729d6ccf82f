//! Kubernetes defaulting for the supported kinds.
//!
//! Owns the values the API server fills in on write when a client leaves a field unset
//! (restartPolicy Always, imagePullPolicy from the image tag, Deployment strategy 25%/25%,
//! Service targetPort = port, ...), following upstream `SetDefaults_*` functions. Defaulting is
//! idempotent and never overwrites a value the client set. It never validates: run
//! [`crate::validation::validate`] afterwards.
//!
//! The typed functions (`pod_spec`, `container`, ...) are public so controllers that build
//! objects in code (a ReplicaSet stamping out Pods) get exactly the server's defaults.

use crate::kinds::KindInfo;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::{discovery, rbac};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Apply defaults to a canonical object of `kind` (as returned by [`crate::strict::decode`]).
/// An object that does not deserialize as `kind` is left untouched (validation will report it).
/// The object is rewritten from its typed form, so fields unknown to the type are dropped.
pub fn apply(kind: &KindInfo, obj: &mut Value) {
    match kind.kind {
        "Pod" => with::<core::Pod>(obj, pod),
        "Service" => with::<core::Service>(obj, |s| {
            if let Some(spec) = s.spec.as_mut() {
                service_spec(spec)
            }
        }),
        "Secret" => with::<core::Secret>(obj, secret),
        "PersistentVolume" => with::<core::PersistentVolume>(obj, |pv| {
            if let Some(s) = pv.spec.as_mut() {
                set(&mut s.persistent_volume_reclaim_policy, "Retain");
                set(&mut s.volume_mode, "Filesystem");
            }
        }),
        "PersistentVolumeClaim" => with::<core::PersistentVolumeClaim>(obj, |pvc| {
            if let Some(s) = pvc.spec.as_mut() {
                pvc_spec(s)
            }
        }),
        "ReplicaSet" => with::<apps::ReplicaSet>(obj, |rs| {
            if let Some(s) = rs.spec.as_mut() {
                s.replicas.get_or_insert(1);
                if let Some(t) = s.template.as_mut() {
                    pod_template(t);
                }
            }
        }),
        "Deployment" => with::<apps::Deployment>(obj, |d| {
            if let Some(s) = d.spec.as_mut() {
                deployment_spec(s)
            }
        }),
        "DaemonSet" => with::<apps::DaemonSet>(obj, |d| {
            if let Some(s) = d.spec.as_mut() {
                daemon_set_spec(s)
            }
        }),
        "StatefulSet" => with::<apps::StatefulSet>(obj, |d| {
            if let Some(s) = d.spec.as_mut() {
                stateful_set_spec(s)
            }
        }),
        "Job" => with::<batch::Job>(obj, |j| {
            if let Some(s) = j.spec.as_mut() {
                job_spec(s)
            }
        }),
        "CronJob" => with::<batch::CronJob>(obj, |c| {
            if let Some(s) = c.spec.as_mut() {
                cron_job_spec(s)
            }
        }),
        "EndpointSlice" => with::<discovery::v1::EndpointSlice>(obj, |e| {
            for p in e.ports.iter_mut().flatten() {
                set(&mut p.protocol, "TCP");
            }
        }),
        "RoleBinding" => {
            with::<rbac::v1::RoleBinding>(obj, |b| subjects(b.subjects.as_deref_mut()))
        }
        "ClusterRoleBinding" => {
            with::<rbac::v1::ClusterRoleBinding>(obj, |b| subjects(b.subjects.as_deref_mut()))
        }
        _ => {}
    }
}

fn with<T: DeserializeOwned + Serialize>(obj: &mut Value, f: impl FnOnce(&mut T)) {
    let Ok(mut typed) = T::deserialize(&*obj) else {
        return;
    };
    f(&mut typed);
    if let Ok(v) = serde_json::to_value(&typed) {
        *obj = v;
    }
}

fn set(field: &mut Option<String>, value: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(value.to_string());
    }
}

/// Pod defaults: the pod spec's, plus requests copied from limits where requests are unset.
pub fn pod(p: &mut core::Pod) {
    let Some(spec) = p.spec.as_mut() else { return };
    pod_spec(spec);
    // SetDefaults_Pod: a container with limits but no request for a resource requests its limit.
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let Some(r) = c.resources.as_mut() else {
            continue;
        };
        let Some(limits) = r.limits.clone() else {
            continue;
        };
        let requests = r.requests.get_or_insert_with(Default::default);
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

/// Pod template defaults (the embedded pod spec).
pub fn pod_template(t: &mut core::PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        pod_spec(spec);
    }
}

/// Pod spec defaults (`SetDefaults_PodSpec` and the defaults of everything it embeds).
pub fn pod_spec(s: &mut core::PodSpec) {
    set(&mut s.restart_policy, "Always");
    set(&mut s.dns_policy, "ClusterFirst");
    set(&mut s.scheduler_name, "default-scheduler");
    s.termination_grace_period_seconds.get_or_insert(30);
    s.security_context.get_or_insert_with(Default::default);
    s.enable_service_links.get_or_insert(true);
    for c in s.containers.iter_mut() {
        container(c);
    }
    for c in s.init_containers.iter_mut().flatten() {
        container(c);
    }
    for v in s.volumes.iter_mut().flatten() {
        volume(v);
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent` (a digest without a tag
/// counts as pinned).
pub fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Container defaults.
pub fn container(c: &mut core::Container) {
    if c.image_pull_policy.as_deref().is_none_or(str::is_empty) {
        c.image_pull_policy = Some(image_pull_policy(c.image.as_deref().unwrap_or("")).to_string());
    }
    set(&mut c.termination_message_path, "/dev/termination-log");
    set(&mut c.termination_message_policy, "File");
    for p in c.ports.iter_mut().flatten() {
        set(&mut p.protocol, "TCP");
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            set(&mut f.api_version, "v1");
        }
    }
    for p in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        probe(p);
    }
}

/// Probe defaults: period 10s, timeout 1s, thresholds 1/3, HTTP scheme and path.
pub fn probe(p: &mut core::Probe) {
    p.period_seconds.get_or_insert(10);
    p.timeout_seconds.get_or_insert(1);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = p.http_get.as_mut() {
        set(&mut h.scheme, "HTTP");
        set(&mut h.path, "/");
    }
}

/// Volume defaults: no source means emptyDir; projected files are mode 0644.
pub fn volume(v: &mut core::Volume) {
    let has_source = serde_json::to_value(&*v)
        .ok()
        .and_then(|j| j.as_object().map(|m| m.keys().any(|k| k != "name")))
        .unwrap_or(true);
    if !has_source {
        v.empty_dir = Some(Default::default());
    }
    if let Some(c) = v.config_map.as_mut() {
        c.default_mode.get_or_insert(0o644);
    }
    if let Some(s) = v.secret.as_mut() {
        s.default_mode.get_or_insert(0o644);
    }
    if let Some(d) = v.downward_api.as_mut() {
        d.default_mode.get_or_insert(0o644);
    }
    if let Some(p) = v.projected.as_mut() {
        p.default_mode.get_or_insert(0o644);
    }
    if let Some(h) = v.host_path.as_mut()
        && h.type_.is_none()
    {
        h.type_ = Some(String::new());
    }
}

/// Deployment defaults: 1 replica, RollingUpdate 25%/25%, 10 revisions, 600s progress deadline.
pub fn deployment_spec(s: &mut apps::DeploymentSpec) {
    s.replicas.get_or_insert(1);
    s.revision_history_limit.get_or_insert(10);
    s.progress_deadline_seconds.get_or_insert(600);
    let strategy = s.strategy.get_or_insert_with(Default::default);
    set(&mut strategy.type_, "RollingUpdate");
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    pod_template(&mut s.template);
}

/// DaemonSet defaults: RollingUpdate with maxUnavailable 1 and maxSurge 0, 10 revisions.
pub fn daemon_set_spec(s: &mut apps::DaemonSetSpec) {
    s.revision_history_limit.get_or_insert(10);
    let u = s.update_strategy.get_or_insert_with(Default::default);
    set(&mut u.type_, "RollingUpdate");
    if u.type_.as_deref() == Some("RollingUpdate") {
        let ru = u.rolling_update.get_or_insert_with(Default::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    pod_template(&mut s.template);
}

/// StatefulSet defaults: 1 replica, OrderedReady, RollingUpdate partition 0, 10 revisions,
/// claims retained. `serviceName` is kept as given.
pub fn stateful_set_spec(s: &mut apps::StatefulSetSpec) {
    s.replicas.get_or_insert(1);
    s.revision_history_limit.get_or_insert(10);
    set(&mut s.pod_management_policy, "OrderedReady");
    let u = s.update_strategy.get_or_insert_with(Default::default);
    set(&mut u.type_, "RollingUpdate");
    if u.type_.as_deref() == Some("RollingUpdate") {
        let ru = u.rolling_update.get_or_insert_with(Default::default);
        ru.partition.get_or_insert(0);
    }
    let retention = s
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(Default::default);
    set(&mut retention.when_deleted, "Retain");
    set(&mut retention.when_scaled, "Retain");
    for t in s.volume_claim_templates.iter_mut().flatten() {
        if let Some(spec) = t.spec.as_mut() {
            pvc_spec(spec);
        }
    }
    pod_template(&mut s.template);
}

/// Job defaults (`SetDefaults_Job`): completions and parallelism 1 when both unset, parallelism
/// 1 when unset, backoffLimit 6, NonIndexed, not suspended.
pub fn job_spec(s: &mut batch::JobSpec) {
    if s.completions.is_none() && s.parallelism.is_none() {
        s.completions = Some(1);
    }
    s.parallelism.get_or_insert(1);
    if s.backoff_limit.is_none() {
        s.backoff_limit = Some(if s.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        });
    }
    set(&mut s.completion_mode, "NonIndexed");
    s.suspend.get_or_insert(false);
    if s.pod_replacement_policy.is_none() {
        let policy = if s.pod_failure_policy.is_some() {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        s.pod_replacement_policy = Some(policy.into());
    }
    pod_template(&mut s.template);
}

/// CronJob defaults: Allow, not suspended, history limits 3/1. The job template's pod spec is
/// defaulted; its Job-level fields are defaulted when each Job is created.
pub fn cron_job_spec(s: &mut batch::CronJobSpec) {
    set(&mut s.concurrency_policy, "Allow");
    s.suspend.get_or_insert(false);
    s.successful_jobs_history_limit.get_or_insert(3);
    s.failed_jobs_history_limit.get_or_insert(1);
    if let Some(js) = s.job_template.spec.as_mut() {
        pod_template(&mut js.template);
    }
}

/// Service defaults: ClusterIP, no session affinity, TCP ports, targetPort = port, Cluster
/// traffic policies. IP families and cluster IPs are the allocator's business (the server's).
pub fn service_spec(s: &mut core::ServiceSpec) {
    set(&mut s.type_, "ClusterIP");
    let ty = s.type_.clone().unwrap_or_default();
    set(&mut s.session_affinity, "None");
    if s.session_affinity.as_deref() == Some("ClientIP") {
        let cfg = s
            .session_affinity_config
            .get_or_insert_with(Default::default);
        let ip = cfg.client_ip.get_or_insert_with(Default::default);
        ip.timeout_seconds.get_or_insert(10800);
    }
    if ty != "ExternalName" {
        set(&mut s.internal_traffic_policy, "Cluster");
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(&mut s.external_traffic_policy, "Cluster");
    }
    if ty == "LoadBalancer" {
        s.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    for p in s.ports.iter_mut().flatten() {
        set(&mut p.protocol, "TCP");
        match &p.target_port {
            None => p.target_port = Some(IntOrString::Int(p.port)),
            Some(IntOrString::Int(0)) => p.target_port = Some(IntOrString::Int(p.port)),
            Some(IntOrString::String(t)) if t.is_empty() => {
                p.target_port = Some(IntOrString::Int(p.port))
            }
            Some(_) => {}
        }
    }
}

/// Secret defaults: type Opaque, and `stringData` merged into `data` (stringData wins), as the
/// API server stores it: `stringData` is write-only.
pub fn secret(s: &mut core::Secret) {
    set(&mut s.type_, "Opaque");
    if let Some(string_data) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in string_data {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
}

/// PVC spec defaults: Filesystem volume mode.
pub fn pvc_spec(s: &mut core::PersistentVolumeClaimSpec) {
    set(&mut s.volume_mode, "Filesystem");
}

fn subjects(subjects: Option<&mut [rbac::v1::Subject]>) {
    for s in subjects.into_iter().flatten() {
        if s.api_group.is_none() {
            s.api_group = Some(match s.kind.as_str() {
                "User" | "Group" => "rbac.authorization.k8s.io".into(),
                _ => String::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds;
    use serde_json::json;

    fn defaulted(v: Value) -> Value {
        let (info, mut obj) = crate::strict::decode(&v).expect("decodes");
        apply(info, &mut obj);
        let mut again = obj.clone();
        apply(info, &mut again);
        assert_eq!(again, obj, "defaulting is idempotent");
        obj
    }

    #[test]
    fn deployment_and_pod_template_defaults() {
        let d = defaulted(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [
                        {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                         "readinessProbe": {"httpGet": {"port": 80}},
                         "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
                        {"name": "b", "image": "nginx:1.27", "imagePullPolicy": "Never"},
                        {"name": "c", "image": "registry.local:5000/team/app"},
                        {"name": "d", "image": "nginx:latest"},
                        {"name": "e", "image": "nginx@sha256:abcd"},
                        {"name": "f", "image": "registry.local:5000/app:v2"}
                    ],
                    "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "cfg"}}]
                }}
            }
        }));
        let s = &d["spec"];
        assert_eq!(s["replicas"], json!(1));
        assert_eq!(s["revisionHistoryLimit"], json!(10));
        assert_eq!(s["progressDeadlineSeconds"], json!(600));
        assert_eq!(
            s["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let ps = &s["template"]["spec"];
        assert_eq!(ps["restartPolicy"], json!("Always"));
        assert_eq!(ps["dnsPolicy"], json!("ClusterFirst"));
        assert_eq!(ps["schedulerName"], json!("default-scheduler"));
        assert_eq!(ps["terminationGracePeriodSeconds"], json!(30));
        assert_eq!(ps["securityContext"], json!({}));
        let c = &ps["containers"];
        let policies: Vec<&str> = (0..6)
            .map(|i| c[i]["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(
            policies,
            vec![
                "Always",
                "Never",
                "Always",
                "Always",
                "IfNotPresent",
                "IfNotPresent"
            ]
        );
        assert_eq!(
            c[0]["terminationMessagePath"],
            json!("/dev/termination-log")
        );
        assert_eq!(c[0]["terminationMessagePolicy"], json!("File"));
        assert_eq!(c[0]["ports"][0]["protocol"], json!("TCP"));
        assert_eq!(
            c[0]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"],
            json!("v1")
        );
        let probe = &c[0]["readinessProbe"];
        assert_eq!(probe["periodSeconds"], json!(10));
        assert_eq!(probe["timeoutSeconds"], json!(1));
        assert_eq!(probe["successThreshold"], json!(1));
        assert_eq!(probe["failureThreshold"], json!(3));
        assert_eq!(probe["httpGet"]["scheme"], json!("HTTP"));
        assert_eq!(probe["httpGet"]["path"], json!("/"));
        assert_eq!(ps["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(ps["volumes"][1]["configMap"]["defaultMode"], json!(420));
    }

    #[test]
    fn explicit_values_are_kept() {
        let d = defaulted(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {
                "replicas": 0,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "a", "image": "nginx",
                        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2, "failureThreshold": 1}}]
                }}
            }
        }));
        assert_eq!(d["spec"]["replicas"], json!(0));
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        let ps = &d["spec"]["template"]["spec"];
        assert_eq!(ps["terminationGracePeriodSeconds"], json!(5));
        assert_eq!(
            ps["containers"][0]["livenessProbe"]["periodSeconds"],
            json!(2)
        );
        assert_eq!(
            ps["containers"][0]["livenessProbe"]["failureThreshold"],
            json!(1)
        );
        assert_eq!(
            ps["containers"][0]["livenessProbe"]["timeoutSeconds"],
            json!(1)
        );
    }

    #[test]
    fn pod_requests_default_to_limits() {
        let p = defaulted(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "busybox:1.36",
                "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "100m"}}}]}
        }));
        let r = &p["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "100m", "memory": "1Gi"}));
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            json!("IfNotPresent")
        );
    }

    #[test]
    fn service_defaults() {
        let s = defaulted(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https", "protocol": "UDP"}]}
        }));
        let spec = &s["spec"];
        assert_eq!(spec["type"], json!("ClusterIP"));
        assert_eq!(spec["sessionAffinity"], json!("None"));
        assert_eq!(spec["internalTrafficPolicy"], json!("Cluster"));
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert_eq!(
            spec["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(
            spec["ports"][1],
            json!({"port": 443, "protocol": "UDP", "targetPort": "https"})
        );

        let s = defaulted(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}
        }));
        assert_eq!(s["spec"]["externalTrafficPolicy"], json!("Cluster"));
        assert_eq!(
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            json!(10800)
        );
    }

    #[test]
    fn statefulset_daemonset_defaults() {
        let s = defaulted(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
        }));
        let spec = &s["spec"];
        assert_eq!(spec["replicas"], json!(1));
        assert_eq!(spec["serviceName"], json!("db"));
        assert_eq!(spec["podManagementPolicy"], json!("OrderedReady"));
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            json!("Filesystem")
        );
        assert_eq!(spec["template"]["spec"]["restartPolicy"], json!("Always"));

        let d = defaulted(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}
        }));
        assert_eq!(d["spec"]["updateStrategy"]["type"], json!("RollingUpdate"));
        assert_eq!(
            d["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            json!(1)
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], json!(10));

        let r = defaulted(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}}
        }));
        assert_eq!(r["spec"]["replicas"], json!(1));
    }

    #[test]
    fn job_and_cronjob_defaults() {
        let job = |spec: Value| {
            let mut full = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "busybox"}]}}});
            if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
                f.extend(s.clone());
            }
            defaulted(
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": full}),
            )
        };
        let j = job(json!({}));
        assert_eq!(j["spec"]["completions"], json!(1));
        assert_eq!(j["spec"]["parallelism"], json!(1));
        assert_eq!(j["spec"]["backoffLimit"], json!(6));
        assert_eq!(j["spec"]["completionMode"], json!("NonIndexed"));
        assert_eq!(j["spec"]["suspend"], json!(false));
        assert_eq!(
            j["spec"]["template"]["spec"]["restartPolicy"],
            json!("Never")
        );
        // Work-queue job: parallelism given, completions stays unset.
        let j = job(json!({"parallelism": 3}));
        assert!(j["spec"].get("completions").is_none());
        assert_eq!(j["spec"]["parallelism"], json!(3));
        let j = job(json!({"completions": 5}));
        assert_eq!(j["spec"]["completions"], json!(5));
        assert_eq!(j["spec"]["parallelism"], json!(1));

        let c = defaulted(json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "busybox"}]}}}}}
        }));
        let s = &c["spec"];
        assert_eq!(s["concurrencyPolicy"], json!("Allow"));
        assert_eq!(s["suspend"], json!(false));
        assert_eq!(s["successfulJobsHistoryLimit"], json!(3));
        assert_eq!(s["failedJobsHistoryLimit"], json!(1));
        assert_eq!(
            s["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            json!("ClusterFirst")
        );
    }

    #[test]
    fn secret_and_storage_defaults() {
        let s = defaulted(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "YQ==", "b": "b2xk"}, "stringData": {"b": "new", "c": "see"}
        }));
        assert_eq!(s["type"], json!("Opaque"));
        assert_eq!(s["data"], json!({"a": "YQ==", "b": "bmV3", "c": "c2Vl"}));
        assert!(s.get("stringData").is_none());

        let pvc = defaulted(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        assert_eq!(pvc["spec"]["volumeMode"], json!("Filesystem"));
        let pv = defaulted(
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "v"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}, "hostPath": {"path": "/data"}}}),
        );
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], json!("Retain"));
    }

    #[test]
    fn rbac_subject_api_groups() {
        let b = defaulted(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "default", "namespace": "x"}]}),
        );
        assert_eq!(
            b["subjects"][0]["apiGroup"],
            json!("rbac.authorization.k8s.io")
        );
        assert_eq!(b["subjects"][1]["apiGroup"], json!(""));
    }

    #[test]
    fn undecodable_objects_are_left_alone() {
        let info = kinds::lookup("pod").unwrap();
        let mut v = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "oops"}});
        let before = v.clone();
        apply(info, &mut v);
        assert_eq!(v, before);
    }

    #[test]
    fn pull_policy_from_image() {
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("nginx:latest"), "Always");
        assert_eq!(image_pull_policy("nginx:1"), "IfNotPresent");
        assert_eq!(image_pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(image_pull_policy("localhost:5000/nginx:1"), "IfNotPresent");
        assert_eq!(image_pull_policy("nginx@sha256:00"), "IfNotPresent");
        assert_eq!(image_pull_policy("nginx:1@sha256:00"), "IfNotPresent");
    }
}
