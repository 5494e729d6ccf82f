//! Root-only: Services load-balanced by the agent's socket-level eBPF programs (cgroup
//! connect4 / sendmsg4 / recvmsg4 / getpeername4), on one agent with real pods.
//!
//! Checks: a ClusterIP spreads connections over its ready pods, from the node and from a pod
//! (which also gets the `<SVC>_SERVICE_HOST` variables);
//! a NodePort answers on loopback; a pod that stops being ready gets no new connections; a
//! Service without endpoints refuses at once; the maps keep balancing while the agent is down
//! (kill -9) and after it restarts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::{Cluster, agent::TestAgent, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/busybox:1";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root");
    }
    if image::busybox().is_none() {
        return Some("busybox-static not installed (bash .ci/setup installs it)");
    }
    None
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    agent: &TestAgent,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}; agent log:\n{}",
                agent.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` HTTP GETs of `/index.html` at `addr` (`ip:port`) from a process in the node's cgroup
/// (busybox nc: static busybox's wget crashes in glibc's NSS here); the bodies that came
/// back, `FAILED` for a failed request.
fn fetch_from_node(agent: &TestAgent, addr: &str, n: usize) -> Result<Vec<String>> {
    let (ip, port) = addr.rsplit_once(':').unwrap_or((addr, "80"));
    let out = agent.node_sh(&format!(
        "for i in $(seq {n}); do r=$(printf 'GET /index.html HTTP/1.0\r\n\r\n' | busybox nc -w 2 {ip} {port} | tail -n 1); echo ${{r:-FAILED}}; done"
    ))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

async fn ready_endpoints(c: &Client, svc: &str) -> usize {
    let Ok(l) = c
        .list(
            "EndpointSlice",
            &ListOptions {
                namespace: Some("default".into()),
                label_selector: format!("kubernetes.io/service-name={svc}"),
                ..Default::default()
            },
        )
        .await
    else {
        return 0;
    };
    l["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .count()
}

fn web_pod(agent: &TestAgent, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": agent.node_name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "web", "image": IMAGE,
                "command": ["sh", "-c", "hostname > /www/index.html; touch /tmp/ready; exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_node_ports_are_balanced_at_the_socket() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP services: {why}");
        return Ok(());
    }
    let cidr = format!("10.{}.0.0/16", 100 + std::process::id() % 50);
    let cluster = Cluster::start(1, &["--cluster-cidr", &cidr]).await?;
    let c = cluster.client();
    let mut agent = TestAgent::start(&cluster, "svc")?;
    let archive = agent.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    agent.import_image(&archive)?;

    for name in ["web-a", "web-b", "web-c"] {
        c.create("Pod", "default", &web_pod(&agent, name)).await?;
    }
    let svc = c
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        )
        .await?;
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
    c.create(
        "Service",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "empty"},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}}),
    )
    .await?;
    let empty = c.get("Service", "default", "empty").await?["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for(
        "3 ready endpoints",
        Duration::from_secs(60),
        &agent,
        async || (ready_endpoints(&c, "web").await == 3).then_some(()),
    )
    .await?;

    // From the node: the ClusterIP reaches all three pods.
    let front = format!("{vip}:80");
    let seen = wait_for(
        "the ClusterIP to balance over 3 pods",
        Duration::from_secs(20),
        &agent,
        async || {
            let bodies = fetch_from_node(&agent, &front, 30).ok()?;
            let set: BTreeSet<String> = bodies
                .into_iter()
                .filter(|b| b.starts_with("web-"))
                .collect();
            (set.len() == 3).then_some(set)
        },
    )
    .await?;
    assert_eq!(seen.len(), 3);
    // What the node's maps hold, as an operator sees it.
    let out = std::process::Command::new(ferry_tests::ferry_bin())
        .args(["datapath", "services", "--node-name", &agent.node_name])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{vip}:80 ")) && l.contains(" 3/3 ")),
        "ferry datapath services:\n{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains(&format!("*:{node_port} (NodePort)")),
        "{table}"
    );
    // NodePort on loopback.
    let np = fetch_from_node(&agent, &format!("127.0.0.1:{node_port}"), 3)?;
    assert!(np.iter().all(|b| b.starts_with("web-")), "NodePort: {np:?}");
    // No endpoints: refused at once (not a 2 s timeout).
    let started = Instant::now();
    let refused = fetch_from_node(&agent, &format!("{empty}:80"), 1)?;
    assert_eq!(refused, ["FAILED"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused quickly"
    );

    // From a pod, through the same VIP.
    c.create("Pod", "default", &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {"nodeName": agent.node_name, "restartPolicy": "Never",
            "containers": [{"name": "c", "image": IMAGE,
                "command": ["sh", "-c", format!("echo HOST=$WEB_SERVICE_HOST PORT=$WEB_SERVICE_PORT_HTTP; for i in 1 2 3 4 5 6 7 8 9 10; do printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 2 {vip} 80 | tail -n 1; echo; done")]}]}}))
        .await?;
    let client = wait_for(
        "the client pod to finish",
        Duration::from_secs(60),
        &agent,
        async || {
            c.get("Pod", "default", "client")
                .await
                .ok()
                .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        },
    )
    .await?;
    let uid = client["metadata"]["uid"].as_str().unwrap_or_default();
    let log = std::fs::read_to_string(agent.container_log(uid, "c", 0))?;
    assert_eq!(
        client["status"]["phase"], "Succeeded",
        "{log}\n{:#}",
        client["status"]
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("web-")).count(),
        10,
        "{log}"
    );
    // Kubernetes' service links in the environment of new pods.
    assert!(log.contains(&format!("HOST={vip} PORT=80")), "{log}");

    // web-c stops being ready: new connections avoid it.
    let out = TestAgent::cli(&cluster, &["exec", "web-c", "--", "rm", "/tmp/ready"])?;
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "web-c to leave the ready endpoints",
        Duration::from_secs(20),
        &agent,
        async || (ready_endpoints(&c, "web").await == 2).then_some(()),
    )
    .await?;
    wait_for(
        "web-c to get no new connections",
        Duration::from_secs(10),
        &agent,
        async || {
            let bodies = fetch_from_node(&agent, &front, 20).ok()?;
            (bodies.iter().all(|b| b == "web-a" || b == "web-b")).then_some(())
        },
    )
    .await?;

    // The agent dies: the pinned maps keep balancing; the restarted agent takes over.
    agent.kill9();
    let during = fetch_from_node(&agent, &front, 6)?;
    assert!(
        during.iter().all(|b| b.starts_with("web-")),
        "while the agent is down: {during:?}"
    );
    agent.restart()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = fetch_from_node(&agent, &front, 6)?;
    assert!(
        after.iter().all(|b| b == "web-a" || b == "web-b"),
        "after the restart: {after:?}"
    );
    Ok(())
}
