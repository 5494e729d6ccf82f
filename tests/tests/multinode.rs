//! Root-only: three nodes on one machine (network namespaces on a shared fabric, see
//! `ferry_tests::netns`), each running a real `ferry agent`, and cross-node pod routing
//! (`agent/src/network/routes.rs`) once with direct routes and once with VXLAN.
//!
//! Each test: every node pings every other node's pod gateway (the first address of its pod
//! CIDR, on the `ferry0` bridge), which only works through the agents' routes; an agent killed
//! with SIGKILL leaves routing working, and on restart repairs a route removed meanwhile; a
//! deleted Node's routes (and VXLAN entries) disappear from the other nodes, while a route
//! nobody in Ferry made stays; at the end no namespace or link of the run remains. Skips with a
//! message when not root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_tests::Cluster;
use ferry_tests::netns::{self, Fabric};

/// What a route made by somebody else than Ferry looks like (from `ip route add`, protocol
/// `boot`): it must survive every resync.
const FOREIGN_ROUTE: &str = "198.51.100.0/24";

fn gateway(cidr: &str) -> Result<Ipv4Addr> {
    let (net, _) = cidr.split_once('/').context("pod CIDR without a prefix")?;
    let net: Ipv4Addr = net.parse()?;
    Ok(Ipv4Addr::from(u32::from(net) + 1))
}

/// Waits for the agent of node `i` to make its pod bridge `ferry0` (it does once it has a pod
/// CIDR), which holds the gateway address the other nodes ping.
async fn wait_pod_bridge(fabric: &Fabric, i: usize, cidr: &str) -> Result<()> {
    let gw = gateway(cidr)?.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = fabric.node_exec(i, &["ip", "-4", "addr", "show", "dev", "ferry0"])?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&gw) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "node {i} never made ferry0 with {gw}: {}",
                fabric.agent_log_tail(i, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pings(fabric: &Fabric, from: usize, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    fabric
        .node_exec(from, &["/bin/busybox", "ping", "-c", "1", "-W", "1", &to])
        .is_ok_and(|o| o.status.success())
}

/// Waits until every node pings every other node's pod gateway.
async fn wait_all_reach(
    fabric: &Fabric,
    cidrs: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let n = fabric.nodes().len();
    let mut pending: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .collect();
    loop {
        let mut still = Vec::new();
        for (i, j) in pending {
            let gw = gateway(&cidrs[&fabric.node(j).name])?;
            if !pings(fabric, i, gw) {
                still.push((i, j));
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let nodes: Vec<String> = (0..n).map(|i| fabric.describe_node(i)).collect();
            bail!(
                "after {timeout:?} these nodes still do not reach those nodes' pod gateways: {pending:?}\n{}\n{}",
                nodes.join("\n"),
                fabric.agent_logs(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Ferry's routes in node `i` (`ip route show proto 70`).
fn ferry_routes(fabric: &Fabric, i: usize) -> Result<String> {
    fabric.node_check(i, &["ip", "-4", "route", "show", "proto", "70"])
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> Result<bool>,
    explain: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ok()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scenario(fabric: &mut Fabric, tunnel: &str) -> Result<()> {
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let admin = cluster.client();
    fabric.start_agents(&cluster, &["--tunnel", tunnel])?;
    let cidrs = fabric
        .wait_nodes_ready(&admin, Duration::from_secs(30))
        .await?;
    for i in 0..fabric.nodes().len() {
        wait_pod_bridge(fabric, i, &cidrs[&fabric.node(i).name]).await?;
    }
    // Somebody else's route in node 0, via node 1.
    let via = fabric.node(1).ip.to_string();
    fabric.node_check(0, &["ip", "route", "add", FOREIGN_ROUTE, "via", &via])?;

    wait_all_reach(fabric, &cidrs, Duration::from_secs(20)).await?;
    // The external client sits on the fabric too.
    let node0 = fabric.node(0).ip.to_string();
    let out = fabric.client_exec(&["/bin/busybox", "ping", "-c", "1", "-W", "1", &node0])?;
    assert!(out.status.success(), "client -> node 0: {out:?}");

    // The routes are Ferry's, and shaped as the mode says.
    let by_index: Vec<String> = (0..fabric.nodes().len())
        .map(|i| cidrs[&fabric.node(i).name].clone())
        .collect();
    let cidr = |i: usize| by_index[i].clone();
    let routes = ferry_routes(fabric, 0)?;
    for j in [1, 2] {
        assert!(routes.contains(&cidr(j)), "node-0 routes: {routes}");
    }
    assert!(
        !routes.contains(&cidr(0)),
        "no route to its own range: {routes}"
    );
    if tunnel == "vxlan" {
        let link = fabric.node_check(0, &["ip", "-d", "link", "show", "ferry.vxlan"])?;
        for want in ["vxlan id 1 ", "dstport 8472", "nolearning"] {
            assert!(link.contains(want), "{want:?} missing: {link}");
        }
        assert!(
            link.contains(&format!("local {}", fabric.node(0).ip)),
            "{link}"
        );
        assert!(routes.contains("dev ferry.vxlan"), "{routes}");
        let fdb = fabric.node_check(0, &["bridge", "fdb", "show", "dev", "ferry.vxlan"])?;
        for j in [1, 2] {
            assert!(
                fdb.contains(&format!("dst {} ", fabric.node(j).ip)),
                "fdb: {fdb}"
            );
        }
    } else {
        for j in [1, 2] {
            assert!(
                routes.contains(&format!("{} via {}", cidr(j), fabric.node(j).ip)),
                "{routes}"
            );
        }
    }

    // kill -9 of node 1's agent: routing stays (the routes are the kernel's). While it is
    // down, its route to node 2 disappears; the restarted agent puts it back.
    let pid = fabric.agent_pid(1).context("agent 1 pid")?;
    fabric.kill9_agent(1);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent 1 (pid {pid}) is gone"
    );
    for (i, j) in [(0, 1), (1, 0), (1, 2)] {
        let gw = gateway(&cidr(j))?;
        assert!(
            pings(fabric, i, gw),
            "node {i} -> node {j} with agent 1 down\n{}",
            fabric.describe_node(i)
        );
    }
    fabric.node_check(1, &["ip", "route", "del", &cidr(2), "proto", "70"])?;
    assert!(
        !pings(fabric, 1, gateway(&cidr(2))?),
        "the route was removed"
    );
    fabric.restart_agent(1)?;
    wait_all_reach(fabric, &cidrs, Duration::from_secs(20)).await?;
    assert!(fabric.agent_running(1), "{}", fabric.agent_log_tail(1, 30));

    // Node 2 leaves: its agent dies and its Node is deleted. The others drop its routes (and
    // FDB and neighbour entries) and keep everything else.
    fabric.kill9_agent(2);
    admin.delete("Node", "", &fabric.node(2).name, "").await?;
    let gone = cidr(2);
    let vtep2 = gone
        .split_once('/')
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let node2_ip = fabric.node(2).ip.to_string();
    for i in [0, 1] {
        wait_until(
            &format!("node {i} to drop node 2's routes"),
            Duration::from_secs(15),
            || {
                let routes = ferry_routes(fabric, i)?;
                let mut clean = !routes.contains(&gone);
                if tunnel == "vxlan" {
                    let fdb =
                        fabric.node_check(i, &["bridge", "fdb", "show", "dev", "ferry.vxlan"])?;
                    let neigh =
                        fabric.node_check(i, &["ip", "neigh", "show", "dev", "ferry.vxlan"])?;
                    clean &= !fdb.contains(&format!("dst {node2_ip} "));
                    clean &= !neigh.lines().any(|l| l.starts_with(&format!("{vtep2} ")));
                }
                Ok(clean)
            },
            || format!("{}\n{}", fabric.describe_node(i), fabric.agent_logs(20)),
        )
        .await?;
    }
    // Nodes 0 and 1 still reach each other.
    assert!(pings(fabric, 0, gateway(&cidr(1))?));
    assert!(pings(fabric, 1, gateway(&cidr(0))?));
    let all = fabric.node_check(0, &["ip", "-4", "route"])?;
    assert!(
        all.contains(FOREIGN_ROUTE),
        "a route Ferry did not make is never touched: {all}"
    );
    drop(cluster);
    Ok(())
}

/// Runs the scenario on a fresh fabric, tears the fabric down, and checks nothing is left.
async fn run(tunnel: &str) -> Result<()> {
    if let Err(why) = netns::available() {
        eprintln!("skipping the multi-node test: {why}");
        return Ok(());
    }
    let started = Instant::now();
    let mut fabric = Fabric::new(3)?;
    let prefix = fabric.prefix().to_string();
    let result = scenario(&mut fabric, tunnel).await;
    drop(fabric);
    let left = netns::leftovers(&prefix);
    result?;
    assert!(left.is_empty(), "left behind after teardown: {left:?}");
    eprintln!("multi-node {tunnel}: {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_other_nodes_through_direct_routes() -> Result<()> {
    run("none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_other_nodes_through_vxlan() -> Result<()> {
    run("vxlan").await
}
