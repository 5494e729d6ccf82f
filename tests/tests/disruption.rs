//! Root-only, in the multi-node harness: service traffic under constant load while the
//! cluster changes underneath it. No request may fail.
//!
//! Three nodes run a Deployment of 3 keep-alive HTTP servers (`ferry-bench-httpd`) behind a
//! NodePort Service; the pods have a readiness probe and a `preStop` sleep, as a user would
//! give them for zero-downtime rollouts (runs without the hook had no failure either: the
//! endpoint leaves every node's maps within milliseconds of the deletion, before the agent
//! stops the container, but that is a race the hook makes certain). Load comes from `ferry-netcheck http-load` (a new
//! connection per request, or kept-alive connections):
//! - **rolling update** (maxSurge 1, maxUnavailable 0): from a client pod through the
//!   ClusterIP, while the Deployment replaces every pod;
//! - **kill -9 of node 0's agent** (restarted 3 s later): through node 0's NodePort from the
//!   external client (TC programs and their NAT map, pinned) and through the ClusterIP from
//!   a process in node 0's pod cgroup subtree and a pod's network namespace (the socket hooks,
//!   pinned), each with new connections and with established keep-alive connections.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/load:1";
const NETCHECK: &str = env!("CARGO_BIN_EXE_ferry-netcheck");
const HTTPD: &str = env!("CARGO_BIN_EXE_ferry-bench-httpd");

fn deployment(version: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
                    "name": "web", "image": IMAGE,
                    "command": ["/bin/ferry-bench-httpd", "8080"],
                    "env": [{"name": "VERSION", "value": version}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "2"]}}}}]}}}})
}

/// `requests=N failures=M` of an http-load run, with the whole output for messages.
fn tally(out: &str) -> Result<(u64, u64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests="))
        .with_context(|| format!("no tally in {out:?}"))?;
    let mut nums = line
        .split(' ')
        .filter_map(|kv| kv.split_once('=')?.1.parse::<u64>().ok());
    Ok((nums.next().unwrap_or(0), nums.next().unwrap_or(0)))
}

fn check_load(what: &str, out: &str) -> Result<()> {
    let (requests, failures) = tally(out)?;
    if requests < 20 || failures > 0 {
        bail!("{what}: {requests} requests, {failures} failed:\n{out}");
    }
    eprintln!("{what}: {requests} requests, none failed");
    Ok(())
}

async fn web_pods(c: &Client) -> Result<Vec<Value>> {
    let l = c
        .list(
            "Pod",
            &ferry_api::client::ListOptions {
                namespace: Some("default".into()),
                label_selector: "app=web".into(),
                ..Default::default()
            },
        )
        .await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

/// The Deployment runs `version` on 3 Ready pods and nothing else.
async fn rolled_out(c: &Client, version: &str) -> Result<bool> {
    let d = c.get("Deployment", "default", "web").await?;
    let st = &d["status"];
    let done = st["observedGeneration"] == d["metadata"]["generation"]
        && st["updatedReplicas"] == 3
        && st["replicas"] == 3
        && st["availableReplicas"] == 3;
    let pods = web_pods(c).await?;
    Ok(done
        && pods.len() == 3
        && pods.iter().all(|p| {
            p["spec"]["containers"][0]["env"][0]["value"] == version
                && p["metadata"]["deletionTimestamp"].is_null()
        }))
}

async fn wait_until(
    what: &str,
    secs: u64,
    fabric: &Fabric,
    mut f: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}:\n{}", fabric.agent_logs(15));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Runs http-load in pod `uid`'s network namespace from node `node`'s pod cgroup subtree,
/// where that node's socket hooks apply, without going through its agent (which is killed
/// meanwhile).
fn spawn_in_pod_cgroup(
    fabric: &Fabric,
    node: usize,
    uid: &str,
    args: &[String],
) -> Result<std::process::Child> {
    let cgroup = ferry_agent::datapath::socklb::cgroup2_root()
        .context("no cgroup2")?
        .join("ferry")
        .join(&fabric.node(node).name);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {NETCHECK} {}",
        cgroup.display(),
        args.join(" ")
    );
    Ok(std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns::pod_netns(uid)))
        .args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

fn spawn_external(fabric: &Fabric, args: &[String]) -> Result<std::process::Child> {
    Ok(std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", fabric.client_netns()))
        .arg("--")
        .arg(NETCHECK)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

fn output(child: std::process::Child) -> Result<String> {
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn load_args(ip: &str, port: u16, secs: u64, mode: &str) -> Vec<String> {
    [
        "http-load",
        ip,
        &port.to_string(),
        &secs.to_string(),
        "2",
        mode,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn scenario(fabric: &mut Fabric) -> Result<()> {
    let archive = fabric.dir().join("load.tar");
    let mut files = image::host_binary_files(Path::new(NETCHECK), "bin/ferry-netcheck")?;
    files.extend(image::host_binary_files(
        Path::new(HTTPD),
        "bin/ferry-bench-httpd",
    )?);
    image::write_busybox_archive_with(&archive, IMAGE, &files)?;
    for i in 0..3 {
        fabric.import_image(i, &archive)?;
    }
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let c = cluster.client();
    fabric.start_agents(&cluster, &[])?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(30)).await?;
    c.create("Deployment", "default", &deployment("v1")).await?;
    let svc = c
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"type": "NodePort", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await?;
    let vip = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0) as u16;
    let client = c
        .create(
            "Pod",
            "default",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
            "spec": {"nodeName": fabric.node(0).name, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "100000"]}]}}),
        )
        .await?;
    let client_uid = client["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    wait_until("3 web pods and the client Ready", 90, fabric, async || {
        let client_ready = c.get("Pod", "default", "client").await?["status"]["phase"] == "Running";
        Ok(client_ready && rolled_out(&c, "v1").await?)
    })
    .await?;
    // Every node's maps have the endpoints before the load starts.
    wait_until("the ClusterIP to answer", 30, fabric, async || {
        Ok(ferry_tests::exec_in_pod(
            &c,
            "client",
            &["ferry-netcheck", "http-load", &vip, "80", "1", "1", "new"],
            30,
        )
        .await
        .ok()
        .and_then(|o| tally(&o).ok())
        .is_some_and(|(r, f)| r > 0 && f == 0))
    })
    .await?;

    // A rolling update under load: no failed request.
    let load = {
        let c = c.clone();
        let vip = vip.clone();
        tokio::spawn(async move {
            ferry_tests::exec_in_pod(
                &c,
                "client",
                &["ferry-netcheck", "http-load", &vip, "80", "25", "2", "new"],
                60,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A merge patch replaces the containers list: send the whole template.
    c.patch(
        "Deployment",
        "default",
        "web",
        &json!({"spec": deployment("v2")["spec"]}),
    )
    .await?;
    wait_until("the rollout to v2", 60, fabric, async || {
        rolled_out(&c, "v2").await
    })
    .await?;
    let out = load.await??;
    check_load("ClusterIP during a rolling update", &out)?;

    // kill -9 of node 0's agent under load, restarted 3 s later.
    let node0 = fabric.node(0).ip.to_string();
    let loads = vec![
        (
            "NodePort, new connections",
            spawn_external(fabric, &load_args(&node0, node_port, 10, "new"))?,
        ),
        (
            "NodePort, keep-alive",
            spawn_external(fabric, &load_args(&node0, node_port, 10, "keepalive"))?,
        ),
        (
            "ClusterIP, new connections",
            spawn_in_pod_cgroup(fabric, 0, &client_uid, &load_args(&vip, 80, 10, "new"))?,
        ),
        (
            "ClusterIP, keep-alive",
            spawn_in_pod_cgroup(
                fabric,
                0,
                &client_uid,
                &load_args(&vip, 80, 10, "keepalive"),
            )?,
        ),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    fabric.kill9_agent(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    fabric.restart_agent(0)?;
    let mut failed = Vec::new();
    for (what, child) in loads {
        let out = tokio::task::spawn_blocking(move || output(child)).await??;
        if let Err(e) = check_load(&format!("{what}, node 0's agent killed"), &out) {
            failed.push(format!("{e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}\n{}", failed.join("\n"), fabric.agent_log_tail(0, 20));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_a_rollout_or_an_agent_kill() -> Result<()> {
    netns::run_scenario("disruption", 3, scenario).await
}
