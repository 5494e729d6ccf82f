//! DaemonSets and StatefulSets on simulated nodes (Node objects without agents, the test
//! playing the agent as in deployments.rs), claims binding to pre-created volumes (the pod
//! waiting until then, and following the volume's node), and one StatefulSet on a real agent
//! whose pod keeps its data on a provisioned local volume across deletion and recreation (root
//! only).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, DeleteOptions, ListOptions};
use ferry_tests::sim::{add_node, until};
use ferry_tests::{Cluster, agent::TestAgent, image};
use serde_json::{Value, json};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn is_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(p: &Value) -> bool {
    !s(p, "/metadata/deletionTimestamp").is_empty()
}

/// Plays the node agent: bound pods become Running and Ready `delay` after it first sees them;
/// pods marked for deletion are removed `delay` later.
struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    fn start(c: Client, delay: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let force = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Ok(list) = c.list("Pod", &ListOptions::default()).await else {
                    continue;
                };
                for p in list["items"].as_array().into_iter().flatten() {
                    if s(p, "/spec/nodeName").is_empty() {
                        continue;
                    }
                    let name = s(p, "/metadata/name").to_string();
                    let key = format!("{}/{}", s(p, "/metadata/uid"), terminating(p));
                    let first = *seen.entry(key).or_insert_with(Instant::now);
                    if first.elapsed() < delay {
                        continue;
                    }
                    let ns = s(p, "/metadata/namespace");
                    if terminating(p) {
                        let _ = c.delete_with("Pod", ns, &name, &force).await;
                    } else if !is_ready(p) {
                        let now = rfc3339_now();
                        let mut up = p.clone();
                        up["status"]["conditions"] = json!([
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "True", "lastTransitionTime": now}]);
                        up["status"]["phase"] = json!("Running");
                        let _ = c.update_status("Pod", &up).await;
                    }
                }
            }
        });
        FakeKubelet { task }
    }
}

/// Now as RFC 3339 (UTC, seconds), as an agent writes condition times.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn list(c: &Client, kind: &str, selector: &str) -> Result<Vec<Value>> {
    let opts = ListOptions {
        namespace: Some("default".into()),
        label_selector: selector.into(),
        ..Default::default()
    };
    Ok(c.list(kind, &opts).await?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn daemon_set(img: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"nodeSelector": {"role": "worker"},
                                       "containers": [{"name": "c", "image": img}]}}}})
}

/// Live daemon pods by node.
async fn daemon_pods(c: &Client) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for p in list(c, "Pod", "app=agent").await? {
        if !terminating(&p) {
            out.insert(s(&p, "/spec/nodeName").to_string(), p);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_and_rolls_out() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    add_node(&c, "n1", json!({"role": "worker"})).await?;
    add_node(&c, "n2", json!({"role": "worker"})).await?;
    add_node(&c, "n3", json!({})).await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(300));
    c.create("DaemonSet", "default", &daemon_set("agent:v1"))
        .await?;

    let ready_on = async |c: &Client, nodes: &[&str], img: &str| -> Result<bool> {
        let pods = daemon_pods(c).await?;
        let ds = c.get("DaemonSet", "default", "agent").await?;
        let st = &ds["status"];
        let n = nodes.len() as i64;
        Ok(pods.keys().map(String::as_str).eq(nodes.iter().copied())
            && pods
                .values()
                .all(|p| is_ready(p) && s(p, "/spec/containers/0/image") == img)
            && st["desiredNumberScheduled"] == n
            && st["currentNumberScheduled"] == n
            && st["numberReady"] == n
            && st["updatedNumberScheduled"] == n
            && st["numberAvailable"] == n
            && st["observedGeneration"] == ds["metadata"]["generation"])
    };
    until("a ready pod on n1 and n2", 30, async || {
        ready_on(&c, &["n1", "n2"], "agent:v1").await
    })
    .await?;
    let p = &daemon_pods(&c).await?["n1"];
    assert!(!s(p, "/metadata/labels/controller-revision-hash").is_empty());
    assert!(p["spec"]["tolerations"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
    }));

    // A new eligible node gets a pod; a node that stops matching loses its pod.
    add_node(&c, "n4", json!({"role": "worker"})).await?;
    until("a pod on n4", 30, async || {
        ready_on(&c, &["n1", "n2", "n4"], "agent:v1").await
    })
    .await?;
    c.patch(
        "Node",
        "",
        "n2",
        &json!({"metadata": {"labels": {"role": null}}}),
    )
    .await?;
    until("n2's pod gone", 30, async || {
        ready_on(&c, &["n1", "n4"], "agent:v1").await
    })
    .await?;

    // RollingUpdate, maxUnavailable 1: never more than one eligible node without a ready pod.
    c.patch(
        "DaemonSet",
        "default",
        "agent",
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:v2"}]}}}}),
    )
    .await?;
    // `rollout status` follows the DaemonSet until every node runs the new template.
    let out = cluster
        .ferry_ok(&["rollout", "status", "daemonset/agent", "--timeout", "60s"])
        .await?;
    assert!(
        out.contains("daemon set \"agent\" successfully rolled out"),
        "{out}"
    );
    until("the v2 rollout", 60, async || {
        let pods = daemon_pods(&c).await?;
        let ready = ["n1", "n4"]
            .iter()
            .filter(|n| pods.get(**n).is_some_and(is_ready))
            .count();
        if ready < 1 {
            bail!("both nodes without a ready pod during the rollout: {pods:?}");
        }
        ready_on(&c, &["n1", "n4"], "agent:v2").await
    })
    .await?;

    // History: a ControllerRevision per template; undo puts v1 back, renumbered 3.
    let revisions = async || -> Result<Vec<String>> {
        let out = cluster
            .ferry_ok(&["rollout", "history", "daemonset/agent"])
            .await?;
        Ok(out
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect())
    };
    until("revisions 1 and 2", 10, async || {
        Ok(revisions().await? == ["1", "2"])
    })
    .await?;
    let crs = cluster.ferry_ok(&["get", "controllerrevisions"]).await?;
    assert!(crs.contains("daemonset.apps/agent"), "{crs}");
    let out = cluster
        .ferry_ok(&["rollout", "undo", "daemonset/agent"])
        .await?;
    assert!(out.contains("daemonset.apps/agent rolled back"), "{out}");
    until("the v1 rollback", 60, async || {
        ready_on(&c, &["n1", "n4"], "agent:v1").await
    })
    .await?;
    until("revisions 2 and 3", 10, async || {
        Ok(revisions().await? == ["2", "3"])
    })
    .await?;
    let out = cluster
        .ferry_ok(&["rollout", "history", "daemonset/agent", "--revision", "3"])
        .await?;
    assert!(out.contains("image: agent:v1"), "{out}");
    let out = cluster
        .ferry_ok(&["rollout", "undo", "daemonset/agent", "--to-revision", "3"])
        .await?;
    assert!(out.contains("skipped rollback"), "{out}");

    // maxSurge 1, maxUnavailable 0: each node gets its new pod before the old one goes, so
    // every node keeps a ready pod throughout.
    c.patch(
        "DaemonSet",
        "default",
        "agent",
        &json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"spec": {"containers": [{"name": "c", "image": "agent:v4"}]}}}}),
    )
    .await?;
    let mut surged = false;
    until("the surge rollout", 60, async || {
        let live: Vec<Value> = list(&c, "Pod", "app=agent")
            .await?
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        for n in ["n1", "n4"] {
            let on = live.iter().filter(|p| s(p, "/spec/nodeName") == n);
            if !on.clone().any(is_ready) {
                bail!("node {n} without a ready pod during the surge: {live:?}");
            }
            surged |= on.count() == 2;
        }
        Ok(live.len() == 2 && ready_on(&c, &["n1", "n4"], "agent:v4").await?)
    })
    .await?;
    assert!(surged, "no node ever ran its old and new pods side by side");
    c.patch(
        "DaemonSet",
        "default",
        "agent",
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:v1"}]}}}}),
    )
    .await?;
    until("back to v1", 60, async || {
        ready_on(&c, &["n1", "n4"], "agent:v1").await
    })
    .await?;

    // OnDelete: a template change waits for the pod to be deleted.
    c.patch(
        "DaemonSet",
        "default",
        "agent",
        &json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
                "template": {"spec": {"containers": [{"name": "c", "image": "agent:v3"}]}}}}),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ready_on(&c, &["n1", "n4"], "agent:v1").await? || {
            // Only the status fields differ (updatedNumberScheduled 0): the pods are unchanged.
            daemon_pods(&c)
                .await?
                .values()
                .all(|p| s(p, "/spec/containers/0/image") == "agent:v1")
        }
    );
    let old = daemon_pods(&c).await?["n1"].clone();
    c.delete("Pod", "default", s(&old, "/metadata/name"), "")
        .await?;
    until("a v3 pod on n1", 30, async || {
        let pods = daemon_pods(&c).await?;
        Ok(pods
            .get("n1")
            .is_some_and(|p| is_ready(p) && s(p, "/spec/containers/0/image") == "agent:v3")
            && pods
                .get("n4")
                .is_some_and(|p| s(p, "/spec/containers/0/image") == "agent:v1"))
    })
    .await?;
    Ok(())
}

fn stateful_set(name: &str, replicas: i64, img: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": img,
                                       "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
}

/// Live pods of the set by ordinal name.
async fn set_pods(c: &Client, app: &str) -> Result<BTreeMap<String, Value>> {
    Ok(list(c, "Pod", &format!("app={app}"))
        .await?
        .into_iter()
        .filter(|p| !terminating(p))
        .map(|p| (s(&p, "/metadata/name").to_string(), p))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_keeps_claims_and_rolls_from_the_top() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&c, n, json!({})).await?;
    }
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(300));
    c.create("StatefulSet", "default", &stateful_set("db", 3, "db:v1"))
        .await?;

    // OrderedReady creation: a pod exists only once every lower ordinal is Ready (checked while
    // pods are being created; a rolling update replaces lower ordinals under higher ones).
    let healthy = async |c: &Client, n: usize, img: &str, creating: bool| -> Result<bool> {
        let pods = set_pods(c, "db").await?;
        for (name, _) in pods.iter().filter(|_| creating) {
            let i: usize = name.trim_start_matches("db-").parse()?;
            for j in 0..i {
                if !pods.get(&format!("db-{j}")).is_some_and(is_ready) {
                    bail!("db-{i} exists while db-{j} is not Ready: {pods:?}");
                }
            }
        }
        let sts = c.get("StatefulSet", "default", "db").await?;
        let st = &sts["status"];
        Ok(pods.len() == n
            && pods
                .values()
                .all(|p| is_ready(p) && s(p, "/spec/containers/0/image") == img)
            && st["readyReplicas"] == n as i64
            && st["updatedReplicas"] == n as i64
            && st["currentRevision"] == st["updateRevision"]
            && st["observedGeneration"] == sts["metadata"]["generation"])
    };
    until("db-0..2 Ready", 60, async || {
        healthy(&c, 3, "db:v1", true).await
    })
    .await?;
    let pods = set_pods(&c, "db").await?;
    let p1 = &pods["db-1"];
    assert_eq!(s(p1, "/spec/hostname"), "db-1");
    assert_eq!(s(p1, "/spec/subdomain"), "db");
    assert_eq!(
        s(p1, "/spec/volumes/0/persistentVolumeClaim/claimName"),
        "data-db-1"
    );
    // Each claim was provisioned on its pod's node and bound.
    until("claims bound", 30, async || {
        let claims = list(&c, "PersistentVolumeClaim", "app=db").await?;
        Ok(claims.len() == 3 && claims.iter().all(|c| s(c, "/status/phase") == "Bound"))
    })
    .await?;
    // Events say what the controllers did.
    let events = list(&c, "Event", "").await?;
    let has = |kind: &str, name: &str, reason: &str| {
        events.iter().any(|e| {
            s(e, "/involvedObject/kind") == kind
                && s(e, "/involvedObject/name") == name
                && s(e, "/reason") == reason
        })
    };
    assert!(has("StatefulSet", "db", "SuccessfulCreate"), "{events:?}");
    assert!(has(
        "PersistentVolumeClaim",
        "data-db-2",
        "ProvisioningSucceeded"
    ));
    let pvc = c
        .get("PersistentVolumeClaim", "default", "data-db-1")
        .await?;
    let pv = c
        .get("PersistentVolume", "", s(&pvc, "/spec/volumeName"))
        .await?;
    assert_eq!(s(&pv, "/status/phase"), "Bound");
    assert_eq!(s(&pv, "/spec/claimRef/name"), "data-db-1");
    let node1 = s(p1, "/spec/nodeName").to_string();
    assert_eq!(
        s(
            &pv,
            "/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0/values/0"
        ),
        node1
    );

    // A deleted pod comes back with the same name, claim and node.
    let force = DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let uid = s(p1, "/metadata/uid").to_string();
    c.delete_with("Pod", "default", "db-1", &force).await?;
    until("db-1 recreated", 30, async || {
        let pods = set_pods(&c, "db").await?;
        Ok(pods.get("db-1").is_some_and(|p| {
            s(p, "/metadata/uid") != uid && is_ready(p) && s(p, "/spec/nodeName") == node1
        }))
    })
    .await?;

    // Scale down from the highest ordinal; the claims stay.
    c.patch(
        "StatefulSet",
        "default",
        "db",
        &json!({"spec": {"replicas": 1}}),
    )
    .await?;
    until("one pod", 30, async || {
        let pods = set_pods(&c, "db").await?;
        if pods.contains_key("db-1") && !pods.contains_key("db-2") {
            // fine: db-2 went first
        } else if !pods.contains_key("db-1") && pods.contains_key("db-2") {
            bail!("db-1 removed before db-2");
        }
        Ok(pods.len() == 1 && pods.contains_key("db-0"))
    })
    .await?;
    assert_eq!(list(&c, "PersistentVolumeClaim", "app=db").await?.len(), 3);

    // Back to three, then a rolling update from the highest ordinal down.
    c.patch(
        "StatefulSet",
        "default",
        "db",
        &json!({"spec": {"replicas": 3}}),
    )
    .await?;
    until("three again", 60, async || {
        healthy(&c, 3, "db:v1", true).await
    })
    .await?;
    c.patch(
        "StatefulSet",
        "default",
        "db",
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "db:v2",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}}}),
    )
    .await?;
    let out = cluster
        .ferry_ok(&["rollout", "status", "sts", "db", "--timeout", "60s"])
        .await?;
    // As kubectl: the defaulted `rollingUpdate.partition: 0` makes it a partitioned roll out.
    assert!(
        out.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{out}"
    );
    until("the v2 rollout", 60, async || {
        let pods = set_pods(&c, "db").await?;
        let v2 = |n: &str| {
            pods.get(n)
                .is_some_and(|p| s(p, "/spec/containers/0/image") == "db:v2")
        };
        if (v2("db-0") && !v2("db-1")) || (v2("db-1") && !v2("db-2")) {
            bail!("a lower ordinal updated before a higher one: {pods:?}");
        }
        healthy(&c, 3, "db:v2", false).await
    })
    .await?;

    // Undo: back to the v1 template, rolled out the same way; its revision is renumbered.
    let out = cluster.ferry_ok(&["rollout", "undo", "sts/db"]).await?;
    assert!(out.contains("statefulset.apps/db rolled back"), "{out}");
    until("the v1 rollback", 90, async || {
        healthy(&c, 3, "db:v1", false).await
    })
    .await?;
    let out = cluster.ferry_ok(&["rollout", "history", "sts/db"]).await?;
    let numbers: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(numbers, ["2", "3"], "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_fitting_volumes_and_hold_pods_until_bound() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    add_node(&c, "n1", json!({})).await?;
    add_node(&c, "n2", json!({})).await?;
    // A claim of a class without a provisioner, and a pod using it: the pod waits.
    c.create(
        "PersistentVolumeClaim",
        "default",
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "logs"},
            "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "2Gi"}}}}),
    )
    .await?;
    c.create(
        "Pod",
        "default",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "writer"},
            "spec": {"containers": [{"name": "c", "image": "x"}],
                     "volumes": [{"name": "logs", "persistentVolumeClaim": {"claimName": "logs"}}]}}),
    )
    .await?;
    until("writer Unschedulable", 30, async || {
        let p = c.get("Pod", "default", "writer").await?;
        Ok(p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "PodScheduled"
                        && s(c, "/message").contains("unbound immediate PersistentVolumeClaims")
                })
            }))
    })
    .await?;
    // Volumes: too small, wrong class, and a fitting one pinned to n2.
    let pv = |name: &str, class: &str, size: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"storageClassName": class, "capacity": {"storage": size},
                     "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                     "local": {"path": format!("/srv/{name}")},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}})
    };
    for (name, class, size) in [
        ("small", "manual", "1Gi"),
        ("fast", "fast", "5Gi"),
        ("fits", "manual", "5Gi"),
    ] {
        c.create("PersistentVolume", "", &pv(name, class, size))
            .await?;
    }
    until("logs bound to fits", 30, async || {
        let claim = c.get("PersistentVolumeClaim", "default", "logs").await?;
        let vol = c.get("PersistentVolume", "", "fits").await?;
        Ok(s(&claim, "/spec/volumeName") == "fits"
            && s(&claim, "/status/phase") == "Bound"
            && s(&vol, "/status/phase") == "Bound"
            && s(&vol, "/spec/claimRef/name") == "logs")
    })
    .await?;
    // The pod then goes to the volume's node.
    until("writer on n2", 30, async || {
        let p = c.get("Pod", "default", "writer").await?;
        Ok(s(&p, "/spec/nodeName") == "n2")
    })
    .await?;
    assert_eq!(
        s(
            &c.get("PersistentVolume", "", "small").await?,
            "/status/phase"
        ),
        "Available"
    );
    // pv-protection: a volume deleted while bound stays until its claim is gone.
    c.delete("PersistentVolume", "", "fits", "").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let vol = c.get("PersistentVolume", "", "fits").await?;
    assert!(
        !s(&vol, "/metadata/deletionTimestamp").is_empty()
            && vol["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "kubernetes.io/pv-protection"))
            && s(&vol, "/status/phase") == "Bound",
        "a bound volume waits for its claim: {vol:#}"
    );
    // The claim goes (pvc-protection: after its pod), and then the volume.
    let force = DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    c.delete_with("Pod", "default", "writer", &force).await?;
    c.delete("PersistentVolumeClaim", "default", "logs", "")
        .await?;
    until("fits gone", 30, async || {
        match c.get("PersistentVolume", "", "fits").await {
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(false),
        }
    })
    .await?;
    Ok(())
}

const IMAGE: &str = "localhost/ferry-test/busybox:1";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root");
    }
    if image::busybox().is_none() {
        return Some("busybox-static not installed (bash .ci/setup installs it)");
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"];
    if !runc.iter().any(|p| std::path::Path::new(p).exists()) {
        return Some("runc not installed (bash .ci/setup installs it)");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pod_keeps_its_data_on_a_real_agent() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP sets (real agent): {why}");
        return Ok(());
    }
    let cidr = format!("10.{}.0.0/16", 100 + std::process::id() % 50);
    let cluster = Cluster::start(1, &["--cluster-cidr", &cidr]).await?;
    let c = cluster.client();
    let agent = TestAgent::start(&cluster, "sets")?;
    let archive = agent.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    agent.import_image(&archive)?;

    // The first start writes a token; every start copies what it found to /data/seen.
    let script = "if [ ! -f /data/token ]; then echo token-$RANDOM$RANDOM > /data/token; fi; \
                  cp /data/token /data/seen; exec sleep 3600";
    let mut sts = stateful_set("store", 1, IMAGE);
    sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    sts["spec"]["template"]["spec"]["containers"][0]["command"] = json!(["sh", "-c", script]);
    c.create("StatefulSet", "default", &sts).await?;

    let wait_running = async |not_uid: &str| -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(p) = c.get("Pod", "default", "store-0").await
                && s(&p, "/metadata/uid") != not_uid
                && !terminating(&p)
                && is_ready(&p)
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for store-0; agent log:\n{}",
                    agent.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let first = wait_running("").await?;
    let read = |file: &str| -> Result<String> {
        let out = TestAgent::cli(&cluster, &["exec", "store-0", "--", "cat", file])?;
        if !out.status.success() {
            bail!("cat {file}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let token = read("/data/token")?;
    assert!(token.starts_with("token-"), "{token}");
    // The data is in a provisioned local volume under the agent's data dir.
    let pvc = c
        .get("PersistentVolumeClaim", "default", "data-store-0")
        .await?;
    let pv = c
        .get("PersistentVolume", "", s(&pvc, "/spec/volumeName"))
        .await?;
    let path = std::path::PathBuf::from(s(&pv, "/spec/local/path"));
    assert!(path.starts_with(agent.dir()), "{}", path.display());
    assert_eq!(std::fs::read_to_string(path.join("token"))?, token);

    // Deleted and recreated (same name, same claim): the new container sees the old data.
    c.delete("Pod", "default", "store-0", "").await?;
    wait_running(s(&first, "/metadata/uid")).await?;
    assert_eq!(read("/data/seen")?, token);
    assert_eq!(read("/data/token")?, token);
    assert_eq!(
        s(
            &c.get("PersistentVolumeClaim", "default", "data-store-0")
                .await?,
            "/spec/volumeName"
        ),
        s(&pv, "/metadata/name")
    );

    // The claim is protected while a pod uses it: deleting it only marks it.
    c.delete("PersistentVolumeClaim", "default", "data-store-0", "")
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claim = c
        .get("PersistentVolumeClaim", "default", "data-store-0")
        .await?;
    assert!(terminating(&claim), "{claim}");
    assert_eq!(read("/data/token")?, token);
    // The agent marked the volume: its data is on the node.
    let pv_name = s(&pv, "/metadata/name").to_string();
    let marked = c.get("PersistentVolume", "", &pv_name).await?;
    assert!(
        marked["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f
                .iter()
                .any(|f| f == ferry_api::volumes::LOCAL_VOLUME_CLEANUP)),
        "{marked}"
    );
    // Once the pod is gone the claim goes, then the volume (reclaim policy Delete), and the
    // agent removes the volume's directory before the volume object goes.
    c.delete("StatefulSet", "default", "store", "").await?;
    c.delete("Pod", "default", "store-0", "").await?;
    let gone = async |kind: &str, ns: &str, name: &str| -> Result<bool> {
        match c.get(kind, ns, name).await {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e.into()),
        }
    };
    until("the claim to go", 60, async || {
        gone("PersistentVolumeClaim", "default", "data-store-0").await
    })
    .await?;
    until("the volume to go", 60, async || {
        gone("PersistentVolume", "", &pv_name).await
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; agent log:\n{}", agent.log_tail(30)))?;
    assert!(!path.exists(), "{} is still on the node", path.display());
    Ok(())
}
