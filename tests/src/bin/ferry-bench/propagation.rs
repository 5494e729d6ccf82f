//! The `propagation` benchmark: from an endpoint change written to the API until every node's
//! eBPF maps hold it.
//!
//! Three nodes of the multi-node harness (network namespaces, real `ferry agent` processes)
//! and a 1-member control plane. A Service without selector gets its endpoints from an
//! EndpointSlice this benchmark writes (as an endpoints controller would after a pod turns
//! Ready). Each round replaces the slice's endpoint with a new address, then polls every
//! node's pinned service maps (`/sys/fs/bpf/ferry/<node>/`, opened once) until all of them
//! hold the new backend for the ClusterIP. Latency = the last node's observation - just
//! before the update was sent.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_agent::datapath::{
    services::{BackendAddr, Frontend},
    socklb::PinnedView,
};
use ferry_tests::Cluster;
use ferry_tests::netns::{self, Fabric};
use serde_json::json;

use crate::common::{met, teardown};

/// The goal: p99 at most 100 ms.
const GOAL_P99_MS: f64 = 100.0;

#[derive(Args, Debug)]
pub struct PropagationArgs {
    /// Endpoint changes measured.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: PropagationArgs) -> Result<()> {
    netns::available().map_err(anyhow::Error::msg)?;
    let mut fabric = Fabric::new(args.nodes).context("building the multi-node harness")?;
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let result = measure(&mut fabric, &cluster, &args).await;
    teardown(fabric, cluster);
    result
}

async fn measure(fabric: &mut Fabric, cluster: &Cluster, args: &PropagationArgs) -> Result<()> {
    let c = cluster.client();
    fabric.start_agents(cluster, &[])?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(60)).await?;
    let svc = c
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prop"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await?;
    let vip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .context("clusterIP")?
        .parse()?;
    let frontend = Frontend::internal(vip, 80, 6);
    let slice = |ip: Ipv4Addr| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "prop-1", "labels": {"kubernetes.io/service-name": "prop"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}]})
    };
    let addr_of =
        |round: usize| Ipv4Addr::new(10, 250, (round / 250) as u8, (round % 250) as u8 + 1);
    let mut current = c
        .create("EndpointSlice", "default", &slice(addr_of(0)))
        .await?;
    // Every node's maps, opened once the agents have pinned them and hold the first endpoint.
    let names: Vec<String> = fabric.nodes().iter().map(|n| n.name.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let views: Vec<PinnedView> = loop {
        let opened: Result<Vec<PinnedView>, _> = names
            .iter()
            .map(|n| PinnedView::open(&std::path::Path::new("/sys/fs/bpf/ferry").join(n)))
            .collect();
        if let Ok(v) = opened
            && v.iter()
                .all(|v| v.ready_backends(&frontend).is_some_and(|b| b.len() == 1))
        {
            break v;
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes' maps never held the service:\n{}",
                fabric.agent_logs(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let views = std::sync::Arc::new(views);
    let mut lat_ms = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let want = BackendAddr {
            addr: addr_of(round),
            port: 8080,
            proto: 6,
        };
        let mut next = slice(want.addr);
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        let started = Instant::now();
        current = c.update("EndpointSlice", &next).await?;
        let v = views.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if v.iter()
                    .all(|v| v.ready_backends(&frontend).is_some_and(|b| b == [want]))
                {
                    return Some(started.elapsed());
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .await?;
        let Some(took) = seen else {
            bail!("round {round}: the change never reached every node");
        };
        lat_ms.push(took.as_secs_f64() * 1000.0);
        // Rounds apart, so each change is measured on its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lat_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&lat_ms, 50.0),
        percentile(&lat_ms, 99.0),
        lat_ms.last().copied().unwrap_or(0.0),
    );
    println!(
        "\n{} endpoint changes, {} nodes: until every node's maps hold the change",
        lat_ms.len(),
        args.nodes
    );
    println!("| p50 | p99 | max |");
    println!("|---:|---:|---:|");
    println!("| {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
    println!("goal p99 ≤ {GOAL_P99_MS} ms: {}", met(p99 <= GOAL_P99_MS));
    println!(
        "RESULT propagation nodes={} p50_ms={p50:.1} p99_ms={p99:.1}",
        args.nodes
    );
    Ok(())
}
