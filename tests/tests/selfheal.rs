//! Root-only, in the multi-node harness with a 3-member control plane: workloads heal when
//! nodes and control-plane members die.
//!
//! - A Deployment of 6 web pods spreads 2 per node over 3 nodes (the scheduler's default
//!   spreading of a controller's pods).
//! - Node 2's agent is killed for good: after the configured grace (`--node-monitor-grace-seconds
//!   5`) the node is marked unreachable and tainted NoExecute, its pods are evicted, and 6 Ready
//!   replacements run on nodes 0 and 1.
//! - The raft leader is killed with SIGKILL in the middle of a rolling update: the rollout
//!   completes under the new leader.
//! - A CronJob scheduled every minute runs a Job to completion on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/busybox:1";

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn deployment(version: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "web", "image": IMAGE,
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                    "env": [{"name": "VERSION", "value": version}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}})
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn web_pods(c: &Client) -> Result<Vec<Value>> {
    let l = c
        .list(
            "Pod",
            &ListOptions {
                namespace: Some("default".into()),
                label_selector: "app=web".into(),
                ..Default::default()
            },
        )
        .await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

/// Ready, not terminating web pods per node (of `version` when given).
async fn ready_per_node(c: &Client, version: Option<&str>) -> Result<BTreeMap<String, usize>> {
    let mut per = BTreeMap::new();
    for p in web_pods(c).await? {
        if is_ready(&p)
            && s(&p, "/metadata/deletionTimestamp").is_empty()
            && version.is_none_or(|v| p["spec"]["containers"][0]["env"][0]["value"] == v)
        {
            *per.entry(s(&p, "/spec/nodeName").to_string()).or_default() += 1;
        }
    }
    Ok(per)
}

async fn wait_until(
    what: &str,
    secs: u64,
    fabric: &Fabric,
    mut f: impl AsyncFnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        match f().await {
            Ok(true) => return Ok(started.elapsed()),
            Ok(false) => {}
            // A member may be down for a moment (the leader test): keep polling.
            Err(e) if started.elapsed() < Duration::from_secs(secs) => {
                eprintln!("{what}: {e:#}");
            }
            Err(e) => return Err(e),
        }
        if started.elapsed() > Duration::from_secs(secs) {
            bail!("timed out waiting for {what}:\n{}", fabric.agent_logs(15));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn scenario(fabric: &mut Fabric) -> Result<()> {
    let archive = fabric.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    for i in 0..3 {
        fabric.import_image(i, &archive)?;
    }
    let mut cluster = Cluster::start_on(
        fabric.host_ip().into(),
        3,
        &["--node-monitor-grace-seconds", "5"],
    )
    .await?;
    let c = cluster.client();
    fabric.start_agents(&cluster, &[])?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(60)).await?;
    c.create("Deployment", "default", &deployment("v1")).await?;
    c.create(
        "CronJob",
        "default",
        &json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "tick", "image": IMAGE, "command": ["echo", "tick"]}]}}}}}}),
    )
    .await?;

    // 6 replicas, 2 per node.
    wait_until("6 web pods Ready", 90, fabric, async || {
        Ok(ready_per_node(&c, None).await?.values().sum::<usize>() == 6)
    })
    .await?;
    let per = ready_per_node(&c, None).await?;
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per:?}"
    );

    // Node 2's agent dies for good: its pods are replaced on nodes 0 and 1.
    let dead = fabric.node(2).name.clone();
    fabric.kill9_agent(2);
    let took = wait_until(
        "6 Ready replacements off the dead node",
        90,
        fabric,
        async || {
            let per = ready_per_node(&c, None).await?;
            Ok(!per.contains_key(&dead) && per.values().sum::<usize>() == 6)
        },
    )
    .await?;
    eprintln!("node {dead} killed: 6 pods Ready on the other nodes {took:?} later");
    let node = c.get("Node", "", &dead).await?;
    assert!(
        node["spec"]["taints"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")),
        "the dead node is tainted: {node:#}"
    );

    // A rolling update; the leader dies in the middle of it.
    c.patch(
        "Deployment",
        "default",
        "web",
        &json!({"spec": deployment("v2")["spec"]}),
    )
    .await?;
    wait_until("the rollout to start", 30, fabric, async || {
        Ok(web_pods(&c)
            .await?
            .iter()
            .any(|p| p["spec"]["containers"][0]["env"][0]["value"] == "v2"))
    })
    .await?;
    let leader = cluster.leader().await?;
    cluster.members[leader].kill9();
    eprintln!("killed the leader (member {leader}) mid-rollout");
    let survivor = cluster.member_client((leader + 1) % 3);
    wait_until("the rollout to v2 to complete", 120, fabric, async || {
        let d = survivor.get("Deployment", "default", "web").await?;
        let st = &d["status"];
        let per = ready_per_node(&survivor, Some("v2")).await?;
        let old = web_pods(&survivor)
            .await?
            .iter()
            .filter(|p| {
                p["spec"]["containers"][0]["env"][0]["value"] == "v1"
                    && s(p, "/metadata/deletionTimestamp").is_empty()
            })
            .count();
        Ok(st["observedGeneration"] == d["metadata"]["generation"]
            && st["updatedReplicas"] == 6
            && st["availableReplicas"] == 6
            && per.values().sum::<usize>() == 6
            && old == 0)
    })
    .await?;

    // The CronJob ran on its own (once a minute).
    wait_until("a Job of the CronJob to complete", 90, fabric, async || {
        let jobs = survivor
            .list(
                "Job",
                &ListOptions {
                    namespace: Some("default".into()),
                    ..Default::default()
                },
            )
            .await?;
        Ok(jobs["items"].as_array().into_iter().flatten().any(|j| {
            j["metadata"]["ownerReferences"][0]["name"] == "tick" && j["status"]["succeeded"] == 1
        }))
    })
    .await?;
    let cj = survivor.get("CronJob", "default", "tick").await?;
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_heal_when_nodes_and_the_leader_die() -> Result<()> {
    netns::run_scenario("selfheal", 3, scenario).await
}
