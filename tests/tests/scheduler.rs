//! The scheduler places pods on simulated nodes (Node objects without agents): resources,
//! taints, selectors, pod affinity and anti-affinity, topology spread; an unschedulable pod says
//! why and is retried when the cluster changes.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::Cluster;
use serde_json::{Value, json};

async fn add_node(
    c: &Client,
    name: &str,
    cpu: &str,
    mem: &str,
    labels: Value,
    taints: Value,
) -> Result<()> {
    let n = c
        .create(
            "Node",
            "",
            &json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
        )
        .await?;
    let mut n = n;
    n["status"] = json!({"capacity": {"cpu": cpu, "memory": mem, "pods": "110"},
                         "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}});
    // Node IPAM may write the Node between create and this: no resourceVersion precondition.
    if let Some(m) = n["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    c.update_status("Node", &n).await?;
    Ok(())
}

fn pod(name: &str, cpu: &str, extra: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                 "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}});
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    p
}

async fn wait_pod(c: &Client, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(p) = c.get("Pod", "default", name).await
            && f(&p)
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pod {name}: timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_placed_by_resources_taints_and_selectors() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    add_node(&c, "n1", "2", "4Gi", json!({"zone": "a"}), json!([])).await?;
    add_node(&c, "n2", "2", "4Gi", json!({"zone": "b"}), json!([])).await?;
    add_node(
        &c,
        "gpu",
        "16",
        "64Gi",
        json!({"zone": "a"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await?;

    // Six pods of 500m spread over n1 and n2 (least-allocated), none on the tainted node.
    for i in 0..6 {
        c.create(
            "Pod",
            "default",
            &pod(&format!("web-{i}"), "500m", json!({})),
        )
        .await?;
    }
    let mut placed = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        // Binding and the PodScheduled condition are two writes: wait for both.
        let p = wait_pod(&c, &format!("web-{i}"), "a node and PodScheduled", |p| {
            !node_of(p).is_empty()
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "PodScheduled"))
        })
        .await?;
        *placed.entry(node_of(&p)).or_default() += 1;
        let cond = p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned());
        assert_eq!(cond.map(|c| c["status"].clone()), Some(json!("True")));
    }
    assert_eq!(placed.get("n1"), Some(&3), "{placed:?}");
    assert_eq!(placed.get("n2"), Some(&3), "{placed:?}");

    // A selector and a toleration steer pods.
    c.create(
        "Pod",
        "default",
        &pod("zone-b", "100m", json!({"nodeSelector": {"zone": "b"}})),
    )
    .await?;
    assert_eq!(
        node_of(&wait_pod(&c, "zone-b", "a node", |p| !node_of(p).is_empty()).await?),
        "n2"
    );
    let tol = json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]});
    c.create("Pod", "default", &pod("trainer", "8", tol))
        .await?;
    assert_eq!(
        node_of(&wait_pod(&c, "trainer", "a node", |p| !node_of(p).is_empty()).await?),
        "gpu"
    );

    // Too big for anything: PodScheduled=False says why, with an Event.
    c.create("Pod", "default", &pod("whale", "12", json!({})))
        .await?;
    let p = wait_pod(&c, "whale", "an Unschedulable condition", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "Unschedulable"))
    })
    .await?;
    let msg = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string();
    assert_eq!(
        msg,
        "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    let events = c
        .list(
            "Event",
            &ListOptions {
                namespace: Some("default".into()),
                field_selector: "involvedObject.name=whale".into(),
                ..Default::default()
            },
        )
        .await?;
    assert!(events["items"].as_array().is_some_and(|e| {
        e.iter()
            .any(|e| e["reason"] == "FailedScheduling" && e["message"] == msg.as_str())
    }));

    // The cluster changes: a big node arrives and the pod is retried and placed.
    add_node(&c, "big", "32", "64Gi", json!({}), json!([])).await?;
    assert_eq!(
        node_of(&wait_pod(&c, "whale", "a node", |p| !node_of(p).is_empty()).await?),
        "big"
    );
    Ok(())
}

async fn pods_of(c: &Client, app: &str) -> Result<Vec<Value>> {
    let l = c
        .list(
            "Pod",
            &ListOptions {
                namespace: Some("default".into()),
                label_selector: format!("app={app}"),
                ..Default::default()
            },
        )
        .await?;
    // Pods a ReplicaSet deleted stay Terminating (no agent runs on these simulated nodes to
    // finish the graceful deletion, as with a Kubernetes node without kubelet): not counted.
    Ok(l["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_keep_their_pods_scheduled_and_counted() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&c, n, "4", "8Gi", json!({}), json!([])).await?;
    }
    c.create("ReplicaSet", "default", &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                       "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}}}}))
        .await?;
    until("6 pods spread over 3 nodes", async || {
        let pods = pods_of(&c, "web").await?;
        let mut per = std::collections::BTreeMap::<String, usize>::new();
        for p in &pods {
            *per.entry(node_of(p)).or_default() += 1;
        }
        Ok(pods.len() == 6
            && per.len() == 3
            && per.values().all(|n| *n == 2)
            && !per.contains_key(""))
    })
    .await?;
    let p = &pods_of(&c, "web").await?[0];
    assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert!(
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("web-"))
    );
    until("status replicas 6", async || {
        Ok(c.get("ReplicaSet", "default", "web").await?["status"]["replicas"] == 6)
    })
    .await?;

    // Scale down, then lose a pod: the ReplicaSet converges both times.
    c.patch(
        "ReplicaSet",
        "default",
        "web",
        &json!({"spec": {"replicas": 2}}),
    )
    .await?;
    until("2 pods", async || Ok(pods_of(&c, "web").await?.len() == 2)).await?;
    let victim = pods_of(&c, "web").await?[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // No agent runs on these nodes to finish a graceful deletion: force it, as one would.
    let force = ferry_api::client::DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    c.delete_with("Pod", "default", &victim, &force).await?;
    until("a replacement", async || {
        let pods = pods_of(&c, "web").await?;
        Ok(pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["name"] != victim.as_str() && !node_of(p).is_empty()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_follow_affinity_anti_affinity_and_topology_spread() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    for (n, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
        add_node(
            &c,
            n,
            "4",
            "8Gi",
            json!({"kubernetes.io/hostname": n, "topology.kubernetes.io/zone": zone}),
            json!([]),
        )
        .await?;
    }
    let labelled = |name: &str, app: &str, extra: Value| {
        let mut p = pod(name, "100m", extra);
        p["metadata"]["labels"] = json!({"app": app});
        p
    };
    // Required anti-affinity per zone: one db per zone, the fourth says why it waits.
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
    let mut zones = std::collections::BTreeSet::new();
    for i in 0..3 {
        let name = format!("db-{i}");
        c.create("Pod", "default", &labelled(&name, "db", anti.clone()))
            .await?;
        let p = wait_pod(&c, &name, "a node", |p| !node_of(p).is_empty()).await?;
        zones.insert(node_of(&p).chars().next().unwrap_or('?'));
    }
    assert_eq!(zones.len(), 3, "one db per zone: {zones:?}");
    c.create("Pod", "default", &labelled("db-3", "db", anti.clone()))
        .await?;
    let waiting = wait_pod(&c, "db-3", "PodScheduled=False", |p| {
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        })
    })
    .await?;
    let message = waiting["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .map(|c| c["message"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert_eq!(
        message,
        "0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules."
    );
    // Required affinity: a web pod goes where the cache is.
    c.create(
        "Pod",
        "default",
        &labelled(
            "cache",
            "cache",
            json!({"nodeSelector": {"kubernetes.io/hostname": "b1"}}),
        ),
    )
    .await?;
    wait_pod(&c, "cache", "a node", |p| node_of(p) == "b1").await?;
    c.create(
        "Pod",
        "default",
        &labelled(
            "web",
            "web",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        ),
    )
    .await?;
    assert_eq!(
        node_of(&wait_pod(&c, "web", "a node", |p| !node_of(p).is_empty()).await?),
        "b1"
    );
    // Topology spread, maxSkew 1 per zone: 6 pods make 2 per zone.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    let mut per_zone = std::collections::BTreeMap::<char, usize>::new();
    for i in 0..6 {
        let name = format!("spread-{i}");
        c.create("Pod", "default", &labelled(&name, "spread", spread.clone()))
            .await?;
        let p = wait_pod(&c, &name, "a node", |p| !node_of(p).is_empty()).await?;
        *per_zone
            .entry(node_of(&p).chars().next().unwrap_or('?'))
            .or_default() += 1;
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_zone:?}"
    );
    Ok(())
}
