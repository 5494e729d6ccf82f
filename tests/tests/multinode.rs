//! Root-only: three nodes on one machine (network namespaces on a shared fabric, see
//! `ferry_tests::netns`), each running a real `ferry agent`, with pods under runc on every
//! node, and cross-node pod routing (`agent/src/network/routes.rs`) once with direct routes and
//! once with VXLAN.
//!
//! Each test: every node pings every other node's pod gateway (the first address of its pod
//! CIDR, on the `ferry0` bridge), which only works through the agents' routes; a web pod pinned
//! to each node (busybox httpd, readiness probe) gets Ready with an address of its node's pod
//! CIDR, and from each pod's own network namespace the other nodes' pods answer by pod IP,
//! seeing the client pod's address (no NAT); an agent killed with SIGKILL leaves its pod
//! running and reachable both ways and routing working; restarted, it adopts the pod (same
//! container, same process, restartCount 0) and repairs a route removed meanwhile; a deleted
//! Node's routes (and VXLAN entries) disappear from the other nodes, while a route nobody in
//! Ferry made stays; at the end nothing of the run remains (namespaces, links, pod
//! namespaces, mounts, cgroups, container processes). Skips with a message when not root or
//! without busybox-static and runc.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

/// What a route made by somebody else than Ferry looks like (from `ip route add`, protocol
/// `boot`): it must survive every resync.
const FOREIGN_ROUTE: &str = "198.51.100.0/24";
/// The image every node gets imported into its agent's data directory.
const IMAGE: &str = "localhost/ferry-test/busybox:1";
const WEB_PORT: u16 = 8080;

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if let Err(why) = netns::available() {
        return Some(why);
    }
    if image::busybox().is_none() {
        return Some("busybox-static not installed (bash .ci/setup installs it)".into());
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"];
    if !runc.iter().any(|p| std::path::Path::new(p).exists()) {
        return Some("runc not installed (bash .ci/setup installs it)".into());
    }
    None
}

/// A web pod pinned to `node`: httpd serving a file holding the node's name (from the
/// downward API), logging every request with the client's address (`-v`), Ready once it
/// serves that file.
fn web_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": name, "labels": {"app": "web"}},
    "spec": {
        "nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "web", "image": IMAGE,
            "command": ["sh", "-c", format!("echo $NODE > /www/node; exec httpd -f -v -p {WEB_PORT} -h /www")],
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "readinessProbe": {"httpGet": {"path": "/node", "port": WEB_PORT}, "periodSeconds": 1},
        }],
    }})
}

/// A running web pod, as its status showed it once Ready.
#[derive(Debug, Clone)]
struct Web {
    name: String,
    uid: String,
    ip: Ipv4Addr,
    container_id: String,
}

fn is_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Waits until web pod `name` (on node `i`) is Ready.
async fn wait_web_ready(
    fabric: &Fabric,
    admin: &Client,
    i: usize,
    name: &str,
    timeout: Duration,
) -> Result<Web> {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = admin.get("Pod", "default", name).await.ok();
        if let Some(p) = pod.as_ref().filter(|p| is_ready(p)) {
            let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
            return Ok(Web {
                name: name.to_owned(),
                uid: s("/metadata/uid").context("pod uid")?,
                ip: s("/status/podIP").context("pod IP")?.parse()?,
                container_id: s("/status/containerStatuses/0/containerID")
                    .context("containerID")?,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} not Ready after {timeout:?}: {:#}\n{}",
                pod.unwrap_or_default(),
                fabric.agent_log_tail(i, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What web pod `to` serves (its node's name), fetched from pod `from`'s network namespace.
/// (`timeout`, not wget's `-T`: Debian's busybox 1.35 wget crashes with `-T`.)
fn fetch(fabric: &Fabric, from: &Web, to: &Web) -> Option<String> {
    let url = format!("http://{}:{WEB_PORT}/node", to.ip);
    let out = fabric
        .pod_exec(
            &from.uid,
            &[
                "/bin/busybox",
                "timeout",
                "3",
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                &url,
            ],
        )
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until the pod of every node in `from` fetches the pod of every other node in `to`
/// and gets that node's name back.
async fn wait_pods_reach(
    fabric: &Fabric,
    webs: &[Web],
    pairs: &[(usize, usize)],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(usize, usize)> = pairs.to_vec();
    loop {
        let mut still = Vec::new();
        for (i, j) in pending {
            let got = fetch(fabric, &webs[i], &webs[j]);
            if got.as_deref() != Some(fabric.node(j).name.as_str()) {
                still.push((i, j, got));
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let nodes: Vec<String> = (0..fabric.nodes().len())
                .map(|i| fabric.describe_node(i))
                .collect();
            bail!(
                "after {timeout:?} these pods (from node, to node, answer) still fail: {still:?}\npods: {webs:#?}\n{}\n{}",
                nodes.join("\n"),
                fabric.agent_logs(20)
            );
        }
        pending = still.into_iter().map(|(i, j, _)| (i, j)).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every ordered pair of distinct nodes among `n`.
fn all_pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .collect()
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

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
    let mut pending = all_pairs(n);
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

/// After node `i`'s agent was restarted: waits until it runs its pods again, then checks for
/// a few seconds that it adopted `web` instead of starting it again: the status keeps the
/// container ID and restartCount 0 and stays Ready, and the container's process is the one
/// from before (`pid`), still alive.
async fn check_adopted(
    fabric: &Fabric,
    admin: &Client,
    i: usize,
    web: &Web,
    pid: u32,
) -> Result<()> {
    let runs = |f: &Fabric| {
        f.agent_log_tail(i, usize::MAX)
            .matches("running this node's pods")
            .count()
    };
    wait_until(
        &format!("node {i}'s restarted agent to run its pods"),
        Duration::from_secs(20),
        || Ok(runs(fabric) >= 2),
        || fabric.agent_log_tail(i, 30),
    )
    .await?;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let p = admin.get("Pod", "default", &web.name).await?;
        let cs = &p["status"]["containerStatuses"][0];
        let explain = || format!("{p:#}\n{}", fabric.agent_log_tail(i, 30));
        assert_eq!(
            cs["containerID"],
            web.container_id.as_str(),
            "{}",
            explain()
        );
        assert_eq!(cs["restartCount"], 0, "{}", explain());
        assert!(is_ready(&p), "{}", explain());
        assert_eq!(
            fabric.container_pid(i, &web.container_id),
            Some(pid),
            "{}",
            explain()
        );
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the container's process {pid} is alive\n{}",
            explain()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

async fn scenario(fabric: &mut Fabric, tunnel: &str) -> Result<()> {
    let n = fabric.nodes().len();
    let archive = fabric.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    for i in 0..n {
        fabric.import_image(i, &archive)?;
    }
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let admin = cluster.client();
    fabric.start_agents(&cluster, &["--tunnel", tunnel])?;
    let cidrs = fabric
        .wait_nodes_ready(&admin, Duration::from_secs(30))
        .await?;
    // A web pod pinned to every node; they start while routing is checked.
    for i in 0..n {
        let pod = web_pod(&format!("web-{i}"), &fabric.node(i).name);
        admin.create("Pod", "default", &pod).await?;
    }
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

    // The pods: Ready, addressed from their node's pod CIDR, and every one reaches every
    // other node's by pod IP.
    let mut webs = Vec::new();
    for i in 0..n {
        let w = wait_web_ready(
            fabric,
            &admin,
            i,
            &format!("web-{i}"),
            Duration::from_secs(30),
        )
        .await?;
        assert!(
            in_cidr(w.ip, &cidr(i)),
            "pod {} has {} outside node {i}'s {}",
            w.name,
            w.ip,
            cidr(i)
        );
        webs.push(w);
    }
    wait_pods_reach(fabric, &webs, &all_pairs(n), Duration::from_secs(20)).await?;
    // Each server saw the other pods' own addresses: no NAT between pods. (httpd's child logs
    // the request after the response went out, so the last line may lag the client a little.)
    for (j, web) in webs.iter().enumerate() {
        for (i, client) in webs.iter().enumerate().filter(|(i, _)| *i != j) {
            // busybox httpd -v: `[::ffff:10.244.1.2]:47858: response:200`.
            let from = [
                format!("{}:", client.ip),
                format!("[::ffff:{}]:", client.ip),
            ];
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let log = std::fs::read_to_string(fabric.container_log(j, &web.uid, "web", 0))?;
                if log.lines().any(|l| from.iter().any(|f| l.starts_with(f))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "web-{j} logged no request from web-{i} ({}): {log}",
                    client.ip
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // kill -9 of node 1's agent: its pod keeps running and serving, routing stays (the
    // routes are the kernel's). While it is down, its route to node 2 disappears; the
    // restarted agent puts it back, and adopts its pod.
    let web1_pid = fabric
        .container_pid(1, &webs[1].container_id)
        .context("web-1's container pid")?;
    let pid = fabric.agent_pid(1).context("agent 1 pid")?;
    fabric.kill9_agent(1);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent 1 (pid {pid}) is gone"
    );
    wait_pods_reach(
        fabric,
        &webs,
        &[(0, 1), (2, 1), (1, 0), (1, 2)],
        Duration::from_secs(5),
    )
    .await?;
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
    check_adopted(fabric, &admin, 1, &webs[1], web1_pid).await?;
    wait_pods_reach(fabric, &webs, &all_pairs(n), Duration::from_secs(10)).await?;
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
    if let Some(why) = skip_reason() {
        eprintln!("skipping the multi-node test: {why}");
        return Ok(());
    }
    let started = Instant::now();
    let mut fabric = Fabric::new(3)?;
    let prefix = fabric.prefix().to_string();
    let result = scenario(&mut fabric, tunnel).await;
    let torn = Instant::now();
    let mut left = fabric.teardown();
    drop(fabric);
    eprintln!("multi-node {tunnel}: teardown {:?}", torn.elapsed());
    left.extend(netns::leftovers(&prefix));
    result?;
    assert!(left.is_empty(), "left behind after teardown: {left:#?}");
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
