//! The `scheduler` benchmark: how fast the scheduler places a burst of pods on simulated nodes.
//!
//! For each node count: a fresh 1-member cluster (no agents; `--node-monitor-grace-seconds` large
//! enough that lease-less nodes are never tainted), N Node objects with the same allocatable,
//! then `--pods` small pods created back to back by `--clients` concurrent clients. A watch on
//! pods, opened at the revision before the first create, records when each pod is first seen
//! with `spec.nodeName`. Per-pod latency is bind observed minus create acknowledged; throughput
//! is pods / (last bind - first create). After the run, placements are checked: every pod bound
//! to an existing node, no node above its pod or CPU capacity.
//!
//! There is no peer to run side by side (kube-scheduler needs a kube-apiserver and etcd, not
//! available here); docs/benchmarks.md quotes upstream's published figure instead.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_api::client::{Client, ListOptions};
use ferry_tests::Cluster;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::common::{wait_default_namespace, watch_pods};

/// Allocatable of every simulated node: 10,000 pods fit on 1,000 nodes (110 pods each).
const NODE_CPU: &str = "32";
const NODE_MEMORY: &str = "128Gi";
const NODE_PODS: usize = 110;
/// Requests of every pod.
const POD_CPU: &str = "100m";
const POD_MEMORY: &str = "64Mi";
/// Upstream's published figure (Kubernetes scalability SLOs / scheduler throughput at 5,000
/// nodes), quoted in docs/benchmarks.md.
const UPSTREAM_PODS_PER_S: f64 = 100.0;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Simulated node counts, one fresh cluster each, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    nodes: Vec<usize>,
    /// Pods created per run.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients creating nodes and pods.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The member's control loops (`ferry server --controllers`); e.g. `scheduler,nodeipam` to
    /// see what the other controllers' reactions to the burst cost.
    #[arg(long, default_value = "*")]
    controllers: String,
    /// Seconds to wait for every pod to be bound before giving up.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
struct Run {
    nodes: usize,
    pods: usize,
    pods_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    nodes_used: usize,
    max_per_node: usize,
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    check_args(&args)?;
    println!(
        "scheduler benchmark: {} pods (requests cpu {POD_CPU}, memory {POD_MEMORY}) onto simulated nodes \
         (allocatable cpu {NODE_CPU}, memory {NODE_MEMORY}, pods {NODE_PODS}), {} clients",
        args.pods, args.clients
    );
    println!("  1-member Ferry cluster per node count; no peer measured (see docs/benchmarks.md)");
    let mut runs = Vec::new();
    for &n in &args.nodes {
        let r = run_one(&args, n).await?;
        runs.push(r);
    }
    println!();
    println!(
        "{:>6} | {:>6} | {:>9} {:>9} {:>9} {:>9} | {:>10} {:>8} | {:>8}",
        "nodes",
        "pods",
        "pods/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "nodes used",
        "max/node",
        "vs 100/s"
    );
    println!("{}", "-".repeat(98));
    for r in &runs {
        println!(
            "{:>6} | {:>6} | {:>9.0} {:>9.1} {:>9.1} {:>9.1} | {:>10} {:>8} | {:>7.1}x",
            r.nodes,
            r.pods,
            r.pods_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.nodes_used,
            r.max_per_node,
            r.pods_per_s / UPSTREAM_PODS_PER_S
        );
    }
    println!("{}", result_line(&runs));
    Ok(())
}

fn check_args(args: &SchedulerArgs) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.len() > 5 {
        bail!("--nodes: give 1 to 5 comma-separated counts");
    }
    if let Some(n) = args.nodes.iter().find(|n| **n == 0 || **n > 20_000) {
        bail!("--nodes: {n} is out of range (1..=20000)");
    }
    if args.pods == 0 || args.pods > 100_000 {
        bail!("--pods: {} is out of range (1..=100000)", args.pods);
    }
    if let Some(n) = args.nodes.iter().find(|n| **n * NODE_PODS < args.pods) {
        bail!(
            "--pods {} do not fit on {n} nodes of {NODE_PODS} pods each",
            args.pods
        );
    }
    if args.clients == 0 || args.clients > 999 {
        bail!("--clients: {} is out of range (1..=999)", args.clients);
    }
    if !(args.timeout >= 1.0 && args.timeout <= 3600.0) {
        bail!("--timeout: {} is out of range (1..=3600 s)", args.timeout);
    }
    Ok(())
}

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn pod_name(i: usize) -> String {
    format!("p-{i:06}")
}

fn pod_index(name: &str) -> Option<usize> {
    name.strip_prefix("p-")?.parse().ok()
}

async fn create_node(c: &Client, name: &str) -> Result<()> {
    let mut n = c
        .create(
            "Node",
            "",
            &json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let res = json!({"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS.to_string()});
    n["status"] = json!({"capacity": res, "allocatable": res,
        "conditions": [{"type": "Ready", "status": "True"}]});
    c.update_status("Node", &n)
        .await
        .with_context(|| format!("setting the status of Node {name}"))?;
    Ok(())
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
            "resources": {"requests": {"cpu": POD_CPU, "memory": POD_MEMORY}}}]}})
}

/// Waits until the default namespace exists (the member creates it shortly after start).
async fn run_one(args: &SchedulerArgs, nodes: usize) -> Result<Run> {
    println!("\n[ferry] {nodes} nodes: starting a 1-member cluster");
    let cluster = Cluster::start(
        1,
        &[
            "--node-monitor-grace-seconds",
            "100000",
            "--rate-limit-qps",
            "0",
            "--controllers",
            &args.controllers,
        ],
    )
    .await
    .context("starting the Ferry cluster")?;
    println!(
        "[ferry] member {} pid {}",
        cluster.members[0].addr,
        cluster.members[0].pid().unwrap_or(0)
    );
    let admin = cluster.member_client(0);
    wait_default_namespace(&admin).await?;
    let clients: Vec<Client> = (0..args.clients)
        .map(|_| cluster.member_client(0))
        .collect();

    // Nodes, many at once.
    let t0 = Instant::now();
    futures::stream::iter((0..nodes).map(|i| {
        let c = clients[i % clients.len()].clone();
        async move { create_node(&c, &node_name(i)).await }
    }))
    .buffer_unordered(args.clients)
    .try_collect::<Vec<()>>()
    .await?;
    let list = admin.list("Node", &ListOptions::default()).await?;
    let ready = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n.pointer("/status/allocatable/pods").is_some())
                .count()
        })
        .unwrap_or(0);
    if ready != nodes {
        bail!("created {nodes} nodes but {ready} are listed with allocatable");
    }
    println!(
        "[ferry] {nodes} nodes created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Let the scheduler's and controllers' reactions to the node burst settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The watch starts at the revision before the first pod create.
    let mut watch = watch_pods(&admin).await?;
    let total = args.pods;
    let watcher = tokio::spawn(async move {
        let mut bound: Vec<Option<Instant>> = vec![None; total];
        let mut seen = 0usize;
        while seen < total {
            let ev = match watch.next().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(anyhow::anyhow!("pod watch failed: {e}")),
                None => bail!("pod watch ended after {seen} bound pods"),
            };
            let at = Instant::now();
            if ev.kind != "MODIFIED" && ev.kind != "ADDED" {
                continue;
            }
            let has_node = ev
                .object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_node {
                continue;
            }
            let idx = ev
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .and_then(pod_index);
            if let Some(slot) = idx.and_then(|i| bound.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(at);
                seen += 1;
            }
        }
        Ok(bound)
    });

    // Pods, as fast as the clients go.
    println!(
        "[ferry] creating {total} pods with {} clients",
        clients.len()
    );
    let start = Instant::now();
    let per_client = total.div_ceil(clients.len());
    let creators: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in (k * per_client)..((k + 1) * per_client).min(total) {
                    c.create("Pod", "default", &pod(&pod_name(i)))
                        .await
                        .with_context(|| format!("creating pod {}", pod_name(i)))?;
                    acks.push((i, Instant::now()));
                }
                anyhow::Ok(acks)
            })
        })
        .collect();
    let mut acked: Vec<Option<Instant>> = vec![None; total];
    for t in futures::future::join_all(creators).await {
        for (i, at) in t.context("a client task failed")?? {
            acked[i] = Some(at);
        }
    }
    let create_s = start.elapsed().as_secs_f64();
    println!(
        "[ferry] {total} pods created in {create_s:.2} s ({:.0} creates/s)",
        total as f64 / create_s
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    let bound = match tokio::time::timeout(timeout, watcher).await {
        Ok(r) => r.context("the watch task failed")??,
        Err(_) => {
            let pods = admin.list("Pod", &ListOptions::default()).await?;
            let n = pods["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|p| p.pointer("/spec/nodeName").is_some())
                        .count()
                })
                .unwrap_or(0);
            bail!("only {n} of {total} pods were bound after {timeout:?}");
        }
    };
    let last = bound.iter().flatten().max().copied().unwrap_or(start);
    let elapsed = (last - start).as_secs_f64();
    let mut latencies: Vec<f64> = acked
        .iter()
        .zip(&bound)
        .filter_map(|(a, b)| Some(b.as_ref()?.saturating_duration_since(*a.as_ref()?)))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let idx = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx]
    };
    let (nodes_used, max_per_node) = check_placements(&admin, nodes, total).await?;
    let r = Run {
        nodes,
        pods: total,
        pods_per_s: total as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        nodes_used,
        max_per_node,
    };
    println!(
        "[ferry] {nodes} nodes: {total} pods bound in {elapsed:.2} s: {:.0} pods/s, \
         latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; {} nodes used, at most {} pods on one",
        r.pods_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.nodes_used, r.max_per_node
    );
    drop(cluster);
    Ok(r)
}

/// Every pod bound to one of the simulated nodes, none above capacity. Returns (nodes used,
/// most pods on one node).
async fn check_placements(c: &Client, nodes: usize, pods: usize) -> Result<(usize, usize)> {
    let list = c.list("Pod", &ListOptions::default()).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in &items {
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            bail!(
                "pod {} is not bound",
                p.pointer("/metadata/name").unwrap_or(&Value::Null)
            );
        }
        *per_node.entry(node.to_string()).or_default() += 1;
    }
    if items.len() != pods {
        bail!("listed {} pods, created {pods}", items.len());
    }
    let known: std::collections::HashSet<String> = (0..nodes).map(node_name).collect();
    let mut hist: BTreeMap<usize, usize> = BTreeMap::new();
    for (node, n) in &per_node {
        if !known.contains(node) {
            bail!("{n} pods bound to unknown node {node}");
        }
        // 100m each: the pod count (110) binds before the CPU (32 cores = 320 pods).
        if *n > NODE_PODS {
            bail!("node {node} got {n} pods, above its capacity of {NODE_PODS}");
        }
        *hist.entry(*n).or_default() += 1;
    }
    let max = hist.keys().next_back().copied().unwrap_or(0);
    Ok((per_node.len(), max))
}

/// `RESULT scheduler nodes=5000 pods=10000 pods_per_s=.. p99_ms=.. nodes1000_pods_per_s=.. ...`:
/// the largest node count first, the others as `nodes<N>_` pairs.
fn result_line(runs: &[Run]) -> String {
    let mut parts = vec!["RESULT scheduler".to_string()];
    let Some(main) = runs.iter().max_by_key(|r| r.nodes) else {
        return parts.join(" ");
    };
    parts.push(format!(
        "nodes={} pods={} pods_per_s={:.0} p99_ms={:.1}",
        main.nodes, main.pods, main.pods_per_s, main.p99_ms
    ));
    for r in runs.iter().filter(|r| r.nodes != main.nodes) {
        parts.push(format!(
            "nodes{n}_pods_per_s={:.0} nodes{n}_p99_ms={:.1}",
            r.pods_per_s,
            r.p99_ms,
            n = r.nodes
        ));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(nodes: usize, pods_per_s: f64, p99_ms: f64) -> Run {
        Run {
            nodes,
            pods: 10_000,
            pods_per_s,
            p99_ms,
            ..Default::default()
        }
    }

    #[test]
    fn result_line_shape() {
        assert_eq!(
            result_line(&[run(1000, 3000.4, 12.34), run(5000, 2500.0, 20.0)]),
            "RESULT scheduler nodes=5000 pods=10000 pods_per_s=2500 p99_ms=20.0 \
             nodes1000_pods_per_s=3000 nodes1000_p99_ms=12.3"
        );
    }

    #[test]
    fn pod_names_round_trip() {
        assert_eq!(pod_index(&pod_name(9_999)), Some(9_999));
        assert_eq!(pod_index("other"), None);
    }
}
