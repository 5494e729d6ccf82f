//! Root-only: NodePort traffic from outside the cluster, translated by the agents' TC programs
//! on each node's uplink (`ferry_from_uplink` / `ferry_to_uplink`), in the multi-node harness.
//!
//! Two nodes run a web pod each; a third runs none. An external client (its own network
//! namespace on the fabric, outside every node's cgroup) fetches the NodePort on every node:
//! - node 0 and 1 may pick their local pod (DNAT only: the pod sees the client's address) or
//!   the other node's (DNAT + SNAT: the pod sees the node's address);
//! - node 2 has no local pod: every flow is SNAT-ed to a remote one;
//! - a LoadBalancer address (from the cluster's pool, routed to node 2 by the client) answers
//!   the same way;
//! - a LoadBalancer with `externalTrafficPolicy: Local`: its NodePort on node 0 and 1 always
//!   reaches the local pod, which sees the client's address; node 2 drops it (at XDP); the health check
//!   node port answers 200 with one local endpoint on node 0 and 1, 503 with none on node 2;
//! - `internalTrafficPolicy: Local`: each web pod reaching the ClusterIP gets itself;
//! - Maglev: a flow to the LoadBalancer address gets the same backend through node 0 or 1;
//! - L2 announcement: on-link, the client resolves the LoadBalancer address by ARP to exactly
//!   one node, and the address serves; when that node's network fails, another node takes the
//!   address over and its gratuitous ARP moves the client's entry (last, as it cuts a node off).
//!
//! - path MTU discovery: with the backends' pod links at a smaller MTU, a large upload through
//!   node 2 completes, because node 2 translates the "fragmentation needed" errors about its
//!   SNAT-ed packets into errors about the client's own (and through VXLAN, where the tunnel's
//!   smaller MTU comes first, node 2 sends the client "fragmentation needed" itself);
//! - the XDP fast path (`--lb-acceleration`): flows through node 2 to the other nodes' pods are
//!   translated and sent back out at XDP (its counter grows), also after node 2's agent is
//!   killed and restarted (the pinned XDP link takes the new program); through VXLAN only the
//!   replies take it (the forward direction leaves through the tunnel device: TC's job).
//!
//! Every reply comes back from the address and port the client asked. Once with direct routes
//! between nodes, once through VXLAN (the SNAT-ed packet is redirected into the tunnel device).
//! UDP NodePorts take the same code path; the test image's busybox nc has no UDP mode, so they
//! are not exercised here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/busybox:1";

fn web_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": name, "labels": {"app": "web"}},
    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "web", "image": IMAGE,
            // Every response names the pod and the client address it saw.
            // `size` answers how many bytes of a POST body arrived.
            "command": ["sh", "-c", "mkdir -p /www/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/who; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nhead -c $CONTENT_LENGTH | wc -c\\n' > /www/cgi-bin/size; chmod +x /www/cgi-bin/who /www/cgi-bin/size; exec httpd -f -p 8080 -h /www"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}})
}

async fn ready_endpoints(c: &Client) -> usize {
    let Ok(l) = c
        .list(
            "EndpointSlice",
            &ListOptions {
                namespace: Some("default".into()),
                label_selector: "kubernetes.io/service-name=web".into(),
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

/// One HTTP GET of `/cgi-bin/who` at `ip:port` from the external client: "<pod> <client addr
/// as the pod saw it>", or None.
fn who(fabric: &Fabric, ip: &str, port: u16) -> Option<String> {
    let out = fabric
        .client_exec(&[
            "/bin/busybox",
            "sh",
            "-c",
            &format!(
                "printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port} | tail -n 1"
            ),
        ])
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.starts_with("web-").then_some(line)
}

/// [`who`] from source port `sport` (curl: busybox nc has no option for it).
fn who_from(fabric: &Fabric, ip: &str, port: u16, sport: u16) -> Option<String> {
    let out = fabric
        .client_exec(&[
            "curl",
            "-s",
            "-m",
            "3",
            "--local-port",
            &sport.to_string(),
            &format!("http://{ip}:{port}/cgi-bin/who"),
        ])
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.starts_with("web-").then_some(line)
}

/// Path MTU discovery through a translated flow: with the backends' pod links at MTU 1400,
/// full-size segments from the client to node 2's NodePort (SNAT-ed to the other nodes) make
/// the backend's node answer "fragmentation needed" to node 2, about the translated packet;
/// node 2 must turn that error into one about the client's own packet, or the client never
/// learns the MTU and a large upload stalls.
///
/// Through VXLAN the tunnel's own MTU (1450) comes first: node 2 cannot send the client's
/// full-size segments into it, and answers "fragmentation needed" itself.
async fn path_mtu(fabric: &Fabric, c: &Client, node_port: u16, tunnel: &str) -> Result<()> {
    let mut links = Vec::new();
    for i in 0..2 {
        let pod = c.get("Pod", "default", &format!("web-{i}")).await?;
        let ip = pod["status"]["podIP"]
            .as_str()
            .context("web pod without podIP")?;
        let route = fabric.node_check(i, &["ip", "route", "get", ip])?;
        let dev = route
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .with_context(|| format!("no device in {route:?}"))?
            .to_owned();
        fabric.node_check(i, &["ip", "link", "set", "dev", &dev, "mtu", "1400"])?;
        links.push((i, dev));
    }
    let result = (|| -> Result<()> {
        let body = fabric.dir().join("upload");
        std::fs::write(&body, vec![b'x'; 30_000])?;
        let icmp = fabric.datapath_counter(2, "ns_icmp_error")?;
        let own = fabric.datapath_counter(2, "ns_frag_needed")?;
        let url = format!("http://{}:{node_port}/cgi-bin/size", fabric.node(2).ip);
        let out = fabric.client_exec(&[
            "curl",
            "-s",
            "-m",
            "10",
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ])?;
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(got, "30000", "a 30,000-byte upload through node 2: {out:?}");
        let icmp = fabric.datapath_counter(2, "ns_icmp_error")? - icmp;
        assert!(icmp >= 1, "node 2 translated {icmp} ICMP errors");
        let own = fabric.datapath_counter(2, "ns_frag_needed")? - own;
        if tunnel == "vxlan" {
            assert!(own >= 1, "node 2 sent {own} fragmentation-needed errors");
        }
        Ok(())
    })();
    for (i, dev) in links {
        fabric.node_check(i, &["ip", "link", "set", "dev", &dev, "mtu", "1500"])?;
    }
    result
}

/// Requests through the LoadBalancer address (routed to node 2, which has no local pod, so
/// every flow goes to another node) are carried by the XDP fast path, also while node 2's
/// agent is dead and once it has restarted.
async fn xdp_fast_path(fabric: &mut Fabric, lb_ip: &str, tunnel: &str) -> Result<()> {
    let fetch = |fabric: &Fabric| -> Result<()> {
        for n in 0..5 {
            if who(fabric, lb_ip, 80).is_none() {
                bail!(
                    "request {n} to {lb_ip} failed:\n{}",
                    fabric.agent_log_tail(2, 20)
                );
            }
        }
        Ok(())
    };
    // Each request is one connection: with direct routes, at least its ACKs, data and FINs
    // both ways (the SYN too once the neighbour is known); through VXLAN only the replies,
    // which come back to node 2's address over the plain network (the forward direction
    // leaves through the tunnel device, so XDP passes it to TC).
    let least = if tunnel == "vxlan" { 5 * 3 } else { 5 * 6 };
    let before = fabric.datapath_counter(2, "ns_xdp_tx")?;
    fetch(fabric)?;
    let after = fabric.datapath_counter(2, "ns_xdp_tx")?;
    assert!(
        after >= before + least,
        "the XDP fast path carried {} packets of 5 requests",
        after - before
    );
    let syncs = |fabric: &Fabric| {
        fabric
            .agent_log_tail(2, 100_000)
            .matches("service maps synced")
            .count()
    };
    let synced = syncs(fabric);
    fabric.kill9_agent(2);
    fetch(fabric).context("with node 2's agent dead")?;
    fabric.restart_agent(2)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while syncs(fabric) <= synced {
        if Instant::now() > deadline {
            bail!(
                "node 2's agent never synced again:\n{}",
                fabric.agent_log_tail(2, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = fabric.datapath_counter(2, "ns_xdp_tx")?;
    fetch(fabric).context("after node 2's agent restarted")?;
    let after = fabric.datapath_counter(2, "ns_xdp_tx")?;
    assert!(
        after >= before + least,
        "after the restart the XDP fast path carried {} packets of 5 requests",
        after - before
    );
    Ok(())
}

async fn scenario(fabric: &mut Fabric, tunnel: &str) -> Result<()> {
    let archive = fabric.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    for i in 0..fabric.nodes().len() {
        fabric.import_image(i, &archive)?;
    }
    let cluster = Cluster::start_on(
        fabric.host_ip().into(),
        1,
        &["--loadbalancer-ip-pool", "192.168.77.240/28"],
    )
    .await?;
    let c = cluster.client();
    // Native XDP with direct routes (the agent must manage it); best-effort through VXLAN.
    let acceleration = if tunnel == "vxlan" {
        "best-effort"
    } else {
        "native"
    };
    fabric.start_agents(
        &cluster,
        &["--tunnel", tunnel, "--lb-acceleration", acceleration],
    )?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(30)).await?;
    for i in 0..2 {
        c.create(
            "Pod",
            "default",
            &web_pod(&format!("web-{i}"), &fabric.node(i).name),
        )
        .await?;
    }
    let svc = c
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0) as u16;
    c.create(
        "Service",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_endpoints(&c).await < 2 {
        if Instant::now() > deadline {
            bail!("pods never ready:\n{}", fabric.agent_logs(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client_ip = fabric.client_ip().to_string();
    for i in 0..3 {
        let (node_name, node_ip) = (fabric.node(i).name.clone(), fabric.node(i).ip.to_string());
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Enough fresh connections (new source ports) to meet both pods.
        while seen.len() < 2 {
            if let Some(line) = who(fabric, &node_ip, node_port) {
                let (pod, saw) = line.split_once(' ').unwrap_or((&line, ""));
                // httpd listens on IPv6 and shows IPv4 peers mapped: [::ffff:a.b.c.d].
                let saw = saw.trim_start_matches("[::ffff:").trim_end_matches(']');
                let local = pod == format!("web-{i}");
                if local {
                    assert_eq!(saw, client_ip, "a local backend sees the client: {line}");
                } else {
                    assert_eq!(
                        saw, node_ip,
                        "a remote backend sees node {i} (SNAT): {line}"
                    );
                }
                seen.insert(pod.to_owned());
            }
            if Instant::now() > deadline {
                let stats = fabric.node_exec(
                    i,
                    &[
                        "sh",
                        "-c",
                        &format!(
                            "{} datapath services --node-name {node_name}",
                            ferry_tests::ferry_bin().display()
                        ),
                    ],
                )?;
                bail!(
                    "NodePort on node {i} ({node_ip}:{node_port}) reached only {seen:?}\n{}\n{}",
                    String::from_utf8_lossy(&stats.stdout),
                    fabric.agent_log_tail(i, 20)
                );
            }
        }
    }
    // A LoadBalancer address, routed to node 2 by the client (no L2 announcement yet): node 2
    // has no local pod, so it SNATs to the others.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lb_ip = loop {
        let s = c.get("Service", "default", "web-lb").await?;
        if let Some(ip) = s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            break ip.to_owned();
        }
        if Instant::now() > deadline {
            bail!("no LoadBalancer address: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let via = fabric.node(2).ip.to_string();
    let route = fabric.client_exec(&["ip", "route", "add", &format!("{lb_ip}/32"), "via", &via])?;
    assert!(route.status.success(), "{route:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = who(fabric, &lb_ip, 80) {
            let saw = line.rsplit(' ').next().unwrap_or("");
            let saw = saw.trim_start_matches("[::ffff:").trim_end_matches(']');
            assert_eq!(saw, via, "the pod sees node 2 (SNAT): {line}");
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "LoadBalancer {lb_ip} unreachable:\n{}",
                fabric.agent_log_tail(2, 20)
            );
        }
    }
    xdp_fast_path(fabric, &lb_ip, tunnel).await?;
    path_mtu(fabric, &c, node_port, tunnel).await?;
    maglev_agrees(fabric, &lb_ip)?;
    l2_announcement(fabric, &lb_ip).await?;
    traffic_policies(fabric, &c, &client_ip).await?;
    l2_failover(fabric, &lb_ip).await
}

/// The node whose eth0 has MAC `mac`.
fn node_with_mac(fabric: &Fabric, mac: &str) -> Result<Option<usize>> {
    for i in 0..3 {
        let link = fabric.node_check(i, &["ip", "-br", "link", "show", "eth0"])?;
        if link.split_whitespace().nth(2) == Some(mac) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// The client's neighbour entry for `ip`: its MAC, if any.
fn neighbour(fabric: &Fabric, ip: &str) -> Option<String> {
    let out = fabric
        .client_exec(&["ip", "neigh", "show", "to", ip])
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_owned)
}

/// The announcing node's network fails: once it is declared lost, the next node in rank
/// announces the address and its gratuitous ARP moves the client's cached entry, with no
/// client traffic needed; the address serves again.
async fn l2_failover(fabric: &Fabric, lb_ip: &str) -> Result<()> {
    let old_mac = neighbour(fabric, lb_ip).with_context(|| format!("no entry for {lb_ip}"))?;
    let owner = node_with_mac(fabric, &old_mac)?.context("no node has the cached MAC")?;
    fabric.node_check(owner, &["ip", "link", "set", "eth0", "down"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_mac = loop {
        if let Some(mac) = neighbour(fabric, lb_ip).filter(|m| *m != old_mac) {
            break mac;
        }
        if Instant::now() > deadline {
            bail!(
                "node {owner} lost, but the client still has {lb_ip} at {old_mac}:\n{}",
                fabric.agent_logs(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let now = node_with_mac(fabric, &new_mac)?;
    assert!(
        now.is_some_and(|n| n != owner),
        "{lb_ip} moved to {new_mac}, which is no other node's eth0"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while who(fabric, lb_ip, 80).is_none() {
        if Instant::now() > deadline {
            bail!("{lb_ip} unreachable after the move to node {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// L2 announcement: with an on-link route (no gateway) the client resolves the LoadBalancer
/// address by ARP; exactly one node answers, with its own MAC, and the address serves.
async fn l2_announcement(fabric: &Fabric, lb_ip: &str) -> Result<()> {
    let run = |argv: &[&str]| -> Result<String> {
        let out = fabric.client_exec(argv)?;
        anyhow::ensure!(out.status.success(), "{argv:?}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&[
        "ip",
        "route",
        "replace",
        &format!("{lb_ip}/32"),
        "dev",
        "eth0",
    ])?;
    run(&["ip", "neigh", "flush", "to", lb_ip])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while who(fabric, lb_ip, 80).is_none() {
        if Instant::now() > deadline {
            bail!(
                "{lb_ip} unreachable on-link (nobody answers ARP?):\n{}",
                fabric.agent_logs(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mac =
        neighbour(fabric, lb_ip).with_context(|| format!("no neighbour entry for {lb_ip}"))?;
    // Node eth0 MACs are distinct: the answer came from exactly that node.
    assert!(
        node_with_mac(fabric, &mac)?.is_some(),
        "{lb_ip} is at {mac}, which is no node's eth0"
    );
    Ok(())
}

/// Maglev: the same flow (client address and port to the LoadBalancer address) gets the same
/// backend whichever node it reaches. The client's route to the address moves between node 0
/// and node 1; every source port is used once per node, so each node decides afresh.
fn maglev_agrees(fabric: &Fabric, lb_ip: &str) -> Result<()> {
    let route = |via: usize| {
        let via = fabric.node(via).ip.to_string();
        let out = fabric.client_exec(&[
            "ip",
            "route",
            "replace",
            &format!("{lb_ip}/32"),
            "via",
            &via,
        ])?;
        anyhow::ensure!(out.status.success(), "ip route replace: {out:?}");
        Ok(())
    };
    let mut pods = BTreeSet::new();
    // Source ports above the kernel's ephemeral range (32768-60999): no earlier connection of
    // this test (nc, curl) can have left a flow with the same tuple on a node or a pod.
    for sport in 61_001..61_009u16 {
        let mut picked = Vec::new();
        for node in [0, 1] {
            route(node)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let line = loop {
                if let Some(line) = who_from(fabric, lb_ip, 80, sport) {
                    break line;
                }
                if Instant::now() > deadline {
                    bail!("{lb_ip}:80 from port {sport} through node {node}: no answer");
                }
            };
            picked.push(line);
        }
        let pod = |l: &str| l.split(' ').next().unwrap_or("").to_owned();
        assert_eq!(
            pod(&picked[0]),
            pod(&picked[1]),
            "source port {sport}: node 0 and node 1 picked different backends: {picked:?}"
        );
        pods.insert(pod(&picked[0]));
    }
    assert_eq!(pods.len(), 2, "8 flows all went to {pods:?}");
    let listed = fabric.datapath(0, "services")?;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{lb_ip}:80 ")))
        .with_context(|| format!("no {lb_ip}:80 frontend on node 0:\n{listed}"))?;
    assert!(
        line.contains("[maglev]"),
        "the LoadBalancer frontend has a Maglev table:\n{listed}"
    );
    // Per-service counters: node 0 saw 8 new flows (and their packets) to the address.
    let cols: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(3)
        .map(|c| c.parse().unwrap_or(0))
        .collect();
    assert!(
        cols.len() == 3 && cols[0] >= 8 && cols[1] > cols[0] && cols[2] > cols[1] * 40,
        "flows, packets, bytes of {lb_ip}:80 on node 0: {line}"
    );
    // Connection tracking: the 8 finished flows through node 0 are stamped as recently used
    // and marked closing (their FINs passed), which is what the agent's sweep relies on.
    let flows = fabric.datapath(0, "conntrack")?;
    let ours: Vec<&str> = flows
        .lines()
        .filter(|l| {
            l.starts_with("forward ")
                && l.contains(&format!("-> {lb_ip}:80 "))
                && (61_001..61_009).any(|p| l.contains(&format!(":{p} -> ")))
        })
        .collect();
    assert_eq!(ours.len(), 8, "forward entries of the 8 flows:\n{flows}");
    for l in &ours {
        let idle: u32 = l
            .split_whitespace()
            .find_map(|w| w.strip_suffix('s').and_then(|n| n.parse().ok()))
            .unwrap_or(u32::MAX);
        assert!(idle <= 120, "a flow of this test idle for {idle}s: {l}");
        assert!(
            l.ends_with("closing") || l.contains("closing"),
            "not closing: {l}"
        );
    }
    Ok(())
}

/// `GET /` on the health check node port `port` of node `i`: (status line, body).
fn health_check(fabric: &Fabric, i: usize, port: u16) -> (String, String) {
    let ip = fabric.node(i).ip;
    let out = fabric.client_exec(&[
        "/bin/busybox",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}"),
    ]);
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let status = text.lines().next().unwrap_or("").trim().to_owned();
    let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
    (status, body)
}

async fn traffic_policies(fabric: &Fabric, c: &Client, client_ip: &str) -> Result<()> {
    let svc = c
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-local"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "internalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0) as u16;
    let hc_port = svc["spec"]["healthCheckNodePort"].as_u64().unwrap_or(0) as u16;
    assert!(
        hc_port >= 30000,
        "no healthCheckNodePort allocated: {svc:#}"
    );
    assert_ne!(hc_port, node_port);
    // Nodes 0 and 1: every flow stays on the node, and the pod sees the client.
    for i in 0..2 {
        let node_ip = fabric.node(i).ip.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answered = 0;
        while answered < 5 {
            if let Some(line) = who(fabric, &node_ip, node_port) {
                let (pod, saw) = line.split_once(' ').unwrap_or((&line, ""));
                let saw = saw.trim_start_matches("[::ffff:").trim_end_matches(']');
                assert_eq!(
                    pod,
                    format!("web-{i}"),
                    "node {i} kept the flow local: {line}"
                );
                assert_eq!(saw, client_ip, "the pod sees the client (no SNAT): {line}");
                answered += 1;
            } else if Instant::now() > deadline {
                bail!(
                    "externalTrafficPolicy Local NodePort {node_ip}:{node_port} unreachable:\n{}",
                    fabric.agent_log_tail(i, 20)
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = health_check(fabric, i, hc_port);
            if status == "HTTP/1.1 200 OK" {
                let v: Value = serde_json::from_str(&body)?;
                assert_eq!(v["localEndpoints"], 1, "{body}");
                assert_eq!(v["service"]["name"], "web-local", "{body}");
                break;
            }
            if Instant::now() > deadline {
                bail!("health check port {hc_port} on node {i}: {status:?} {body:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Node 2 has no local pod: its health check says so, and outside traffic is dropped
    // (once its maps hold the external entry, so the refusal is the policy's, not a gap).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = health_check(fabric, 2, hc_port);
        let listed = fabric.datapath(2, "services")?;
        let external = listed
            .lines()
            .any(|l| l.starts_with(&format!("*:{node_port} (NodePort) external")));
        if status == "HTTP/1.1 503 Service Unavailable" && external {
            let v: Value = serde_json::from_str(&body)?;
            assert_eq!(v["localEndpoints"], 0, "{body}");
            break;
        }
        if Instant::now() > deadline {
            bail!("node 2: health check {status:?} {body:?}; maps:\n{listed}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node2 = fabric.node(2).ip.to_string();
    let dropped = fabric.datapath_counter(2, "ns_xdp_drop")?;
    for _ in 0..3 {
        assert_eq!(
            who(fabric, &node2, node_port),
            None,
            "node 2 has no local endpoint: outside traffic must be dropped"
        );
    }
    // Before any socket buffer exists: by the XDP fast path, every SYN.
    let dropped = fabric.datapath_counter(2, "ns_xdp_drop")? - dropped;
    assert!(dropped >= 3, "XDP dropped {dropped} SYNs of 3 connections");
    // internalTrafficPolicy: Local: a pod reaching the ClusterIP gets its own node's endpoint.
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    for i in 0..2 {
        for _ in 0..4 {
            let url = format!("http://{cluster_ip}/cgi-bin/who");
            let out = ferry_tests::exec_in_pod(
                c,
                &format!("web-{i}"),
                &["wget", "-q", "-O", "-", &url],
                20,
            )
            .await
            .with_context(|| format!("web-{i} → {cluster_ip}"))?;
            assert!(
                out.starts_with(&format!("web-{i} ")),
                "internalTrafficPolicy Local: web-{i} reached {out:?}"
            );
        }
    }
    Ok(())
}

async fn run(tunnel: &str) -> Result<()> {
    netns::run_scenario("northsouth", 3, async |fabric| {
        scenario(fabric, tunnel).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_answer_outside_clients_with_direct_routes() -> Result<()> {
    run("none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_answer_outside_clients_through_vxlan() -> Result<()> {
    run("vxlan").await
}
