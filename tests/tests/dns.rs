//! Root-only: the agent's service discovery DNS, on one agent with real pods, queried from the
//! test process at the node's pod-bridge gateway address (port 53, UDP and TCP).
//!
//! Checks: a ClusterIP Service's A and SRV records; a headless Service's ready pod addresses
//! and SRV; hostnames of endpoints (a selector-less headless Service with a hand-written
//! EndpointSlice, as StatefulSet pods get them); pod A records; NXDOMAIN inside the cluster
//! domain; AAAA of an IPv4-only name is an empty NOERROR; an ExternalName Service is a CNAME
//! (its target resolved upstream); names outside the cluster domain are forwarded to an
//! upstream (a fake one on loopback, `--dns-upstream`); a Service created later resolves
//! within a couple of seconds and one deleted stops resolving; pods' resolv.conf name the
//! agent's DNS for ClusterFirst and the node's resolvers for `dnsPolicy: Default`.
//!
//! Static busybox's tools crash in glibc's NSS when they resolve names, so pods resolve
//! nothing by name here: the test process asks, and one pod sends a hand-made query over TCP
//! with `nc` to the gateway (busybox nc has no UDP) to prove the path from a pod's namespace.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use ferry_tests::{Cluster, agent::TestAgent, image};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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
                agent.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fake upstream resolver on loopback: `outside.example.` and `ext-target.example.` have
/// A records, everything else is NXDOMAIN. Counts the questions it got.
async fn fake_upstream() -> Result<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::response(req.metadata.id, req.metadata.op_code);
            m.metadata.recursion_available = true;
            m.add_queries(req.queries.clone());
            let q = &req.queries[0];
            let ip = match q.name().to_ascii().to_ascii_lowercase().as_str() {
                "outside.example." => Some(A::new(192, 0, 2, 7)),
                "ext-target.example." => Some(A::new(192, 0, 2, 8)),
                _ => None,
            };
            match ip {
                Some(ip) if q.query_type() == RecordType::A => {
                    m.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(ip)));
                }
                Some(_) => {}
                None => m.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = m.to_vec() {
                let _ = sock.send_to(&bytes, from).await;
            }
        }
    });
    Ok(addr)
}

/// Asks `server` over UDP (three tries of a second each).
async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Result<Message> {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name)?, t));
    let bytes = q.to_vec()?;
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    sock.connect(server).await?;
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        sock.send(&bytes).await?;
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            let m = Message::from_vec(&buf[..r?])?;
            if m.metadata.id == q.metadata.id {
                return Ok(m);
            }
        }
    }
    bail!("no answer from {server} for {name} {t}")
}

/// Asks `server` over TCP.
async fn ask_tcp(server: SocketAddr, name: &str, t: RecordType) -> Result<Message> {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.add_query(Query::query(Name::from_ascii(name)?, t));
    let bytes = q.to_vec()?;
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(server)).await??;
    s.write_all(&(bytes.len() as u16).to_be_bytes()).await?;
    s.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut len)).await??;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1)
        & 0xffff) as u16
}

/// The answers' data, as text (`10.96.0.10`, `0 100 80 web.default.svc.cluster.local.`).
fn data(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

fn pod(agent: &TestAgent, name: &str, labels: Value, dns_policy: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": agent.node_name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"],
                            "ports": [{"name": "pg", "containerPort": 5432}]}]}});
    if let Some(d) = dns_policy {
        p["spec"]["dnsPolicy"] = json!(d);
    }
    p
}

async fn svc(c: &Client, name: &str, spec: Value) -> Result<Value> {
    Ok(c.create(
        "Service",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}),
    )
    .await?)
}

async fn running_pod(c: &Client, agent: &TestAgent, name: &str) -> Result<Value> {
    wait_for(
        &format!("pod {name} to run"),
        Duration::from_secs(60),
        agent,
        async || {
            c.get("Pod", "default", name).await.ok().filter(|p| {
                p["status"]["phase"] == "Running" && p["status"]["podIP"].as_str().is_some()
            })
        },
    )
    .await
}

fn resolv_conf(agent: &TestAgent, pod: &Value) -> Result<String> {
    let m = &pod["metadata"];
    let path = agent.dir().join("network/pods").join(format!(
        "{}_{}_{}/etc/resolv.conf",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or(""),
        m["uid"].as_str().unwrap_or("")
    ));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_resolve_at_the_node_gateway() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP dns: {why}");
        return Ok(());
    }
    let upstream = fake_upstream().await?;
    let cidr = format!("10.{}.0.0/16", 150 + std::process::id() % 50);
    let cluster = Cluster::start(1, &["--cluster-cidr", &cidr]).await?;
    let c = cluster.client();
    let agent = TestAgent::start_with(&cluster, "dns", &["--dns-upstream", &upstream.to_string()])?;
    let archive = agent.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    agent.import_image(&archive)?;

    // The node's gateway: the first address of its pod CIDR.
    let pod_cidr = wait_for(
        "the node's pod CIDR",
        Duration::from_secs(30),
        &agent,
        async || {
            let n = c.get("Node", "", &agent.node_name).await.ok()?;
            n["spec"]["podCIDR"].as_str().map(str::to_owned)
        },
    )
    .await?;
    let net: Ipv4Addr = pod_cidr.split('/').next().unwrap_or("").parse()?;
    let gateway = Ipv4Addr::from(u32::from(net) + 1);
    let dns = SocketAddr::from((gateway, 53));

    for name in ["db-a", "db-b"] {
        c.create(
            "Pod",
            "default",
            &pod(&agent, name, json!({"app": "db"}), None),
        )
        .await?;
    }
    c.create(
        "Pod",
        "default",
        &pod(&agent, "plain", json!({"app": "plain"}), Some("Default")),
    )
    .await?;
    let web = svc(
        &c,
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    )
    .await?;
    let vip = web["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    svc(
        &c,
        "db",
        json!({"clusterIP": "None", "selector": {"app": "db"},
               "ports": [{"name": "pg", "port": 5432, "targetPort": "pg"}]}),
    )
    .await?;
    svc(
        &c,
        "ext",
        json!({"type": "ExternalName", "externalName": "ext-target.example"}),
    )
    .await?;
    // StatefulSet-style names: a headless Service whose endpoints carry hostnames.
    svc(
        &c,
        "sts",
        json!({"clusterIP": "None", "ports": [{"name": "peer", "port": 7000}]}),
    )
    .await?;
    c.create(
        "EndpointSlice",
        "default",
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "sts-1", "labels": {"kubernetes.io/service-name": "sts"}},
            "addressType": "IPv4",
            "ports": [{"name": "peer", "port": 7000, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.2.3"], "hostname": "sts-0", "conditions": {"ready": true}},
                {"addresses": ["10.1.2.4"], "hostname": "sts-1", "conditions": {"ready": true}}]}),
    )
    .await?;

    // The DNS server comes up with the pod network.
    let m = wait_for(
        "the agent's DNS to answer for web",
        Duration::from_secs(60),
        &agent,
        async || {
            ask(dns, "web.default.svc.cluster.local.", RecordType::A)
                .await
                .ok()
                .filter(|m| !m.answers.is_empty())
        },
    )
    .await?;
    assert_eq!(data(&m), [vip.as_str()]);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers[0].ttl, 5);
    // The same over TCP.
    let m = ask_tcp(dns, "web.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(data(&m), [vip.as_str()]);

    // SRV for the named port, with the target's address.
    let m = ask(
        dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    assert_eq!(data(&m), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(
        m.additionals
            .iter()
            .map(|r| r.data.to_string())
            .collect::<Vec<_>>(),
        [vip.as_str()]
    );

    // AAAA of an IPv4-only name: NOERROR, no answers.
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::AAAA).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // Unknown names in the cluster domain: NXDOMAIN (with the zone's SOA).
    for name in [
        "nope.default.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        "outside.example.default.svc.cluster.local.",
    ] {
        let m = ask(dns, name, RecordType::A).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(m.authorities.len(), 1, "{name}");
    }

    // Headless: the ready pods' addresses.
    let a = running_pod(&c, &agent, "db-a").await?;
    let b = running_pod(&c, &agent, "db-b").await?;
    let want: BTreeSet<String> = [&a, &b]
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap_or("").to_owned())
        .collect();
    let got = wait_for(
        "db to name both pods",
        Duration::from_secs(60),
        &agent,
        async || {
            let m = ask(dns, "db.default.svc.cluster.local.", RecordType::A)
                .await
                .ok()?;
            let got: BTreeSet<String> = data(&m).into_iter().collect();
            (got == want).then_some(got)
        },
    )
    .await?;
    assert_eq!(got.len(), 2);
    let m = ask(
        dns,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    let targets: BTreeSet<String> = data(&m).into_iter().collect();
    let want_targets: BTreeSet<String> = want
        .iter()
        .map(|ip| {
            format!(
                "0 50 5432 {}.db.default.svc.cluster.local.",
                ip.replace('.', "-")
            )
        })
        .collect();
    assert_eq!(targets, want_targets);
    // Endpoint hostnames.
    let m = ask(dns, "sts-1.sts.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(data(&m), ["10.1.2.4"]);
    let m = ask(
        dns,
        "_peer._tcp.sts.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    assert_eq!(
        data(&m),
        [
            "0 50 7000 sts-0.sts.default.svc.cluster.local.",
            "0 50 7000 sts-1.sts.default.svc.cluster.local."
        ]
    );
    // Pod records.
    let ip = a["status"]["podIP"].as_str().unwrap_or("");
    let m = ask(
        dns,
        &format!("{}.default.pod.cluster.local.", ip.replace('.', "-")),
        RecordType::A,
    )
    .await?;
    assert_eq!(data(&m), [ip.to_owned()]);

    // From inside a pod, over its bridge: a TCP query with busybox nc (no UDP in busybox nc),
    // the answer dumped in hex.
    let mut q = Message::query();
    q.metadata.id = 0x4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii("web.default.svc.cluster.local.")?,
        RecordType::A,
    ));
    let wire = q.to_vec()?;
    let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&wire);
    let octal: String = framed.iter().map(|b| format!("\\{b:03o}")).collect();
    c.create(
        "Pod",
        "default",
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "asker"},
        "spec": {"nodeName": agent.node_name, "restartPolicy": "Never",
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c",
                format!("(printf '{octal}'; sleep 2) | nc {gateway} 53 | od -An -v -tx1")]}]}}),
    )
    .await?;
    let asker = wait_for(
        "the asker pod to finish",
        Duration::from_secs(60),
        &agent,
        async || {
            c.get("Pod", "default", "asker")
                .await
                .ok()
                .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        },
    )
    .await?;
    let uid = asker["metadata"]["uid"].as_str().unwrap_or_default();
    let log = std::fs::read_to_string(agent.container_log(uid, "c", 0))?;
    let bytes: Vec<u8> = log
        .split_whitespace()
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    anyhow::ensure!(bytes.len() > 2, "no answer inside the pod: {log:?}");
    let m = Message::from_vec(&bytes[2..]).with_context(|| format!("{log:?}"))?;
    assert_eq!((m.metadata.id, data(&m)), (0x4242, vec![vip.clone()]));

    // ExternalName: a CNAME, the target resolved upstream.
    let m = ask(dns, "ext.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(data(&m), ["ext-target.example.", "192.0.2.8"]);
    let m = ask(dns, "ext.default.svc.cluster.local.", RecordType::CNAME).await?;
    assert_eq!(data(&m), ["ext-target.example."]);

    // Outside the cluster domain: forwarded.
    let m = ask(dns, "outside.example.", RecordType::A).await?;
    assert_eq!(data(&m), ["192.0.2.7"]);
    assert!(!m.metadata.authoritative);
    let m = ask(dns, "missing.example.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Garbage does not stop the server.
    let junk = UdpSocket::bind("0.0.0.0:0").await?;
    junk.send_to(&[0u8; 5], dns).await?;
    junk.send_to(&[0xffu8; 300], dns).await?;
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(data(&m), [vip.as_str()]);

    // A Service created now resolves within a couple of seconds; one deleted goes away.
    let created = Instant::now();
    let late = svc(&c, "late", json!({"ports": [{"port": 80}]})).await?;
    let late_ip = late["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    wait_for(
        "late to resolve",
        Duration::from_secs(10),
        &agent,
        async || {
            let m = ask(dns, "late.default.svc.cluster.local.", RecordType::A)
                .await
                .ok()?;
            (data(&m) == [late_ip.as_str()]).then_some(())
        },
    )
    .await?;
    let took = created.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "late resolved after {took:?}"
    );
    c.delete("Service", "default", "late", "").await?;
    wait_for(
        "late to stop resolving",
        Duration::from_secs(10),
        &agent,
        async || {
            let m = ask(dns, "late.default.svc.cluster.local.", RecordType::A)
                .await
                .ok()?;
            (m.metadata.response_code == ResponseCode::NXDomain).then_some(())
        },
    )
    .await?;

    // resolv.conf: ClusterFirst pods ask the agent; dnsPolicy Default pods the node's resolvers.
    let conf = resolv_conf(&agent, &a)?;
    let nameservers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(nameservers, [gateway.to_string()], "{conf}");
    assert!(
        conf.lines()
            .any(|l| l
                .starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")),
        "{conf}"
    );
    assert!(conf.contains("options ndots:5"), "{conf}");
    let plain = running_pod(&c, &agent, "plain").await?;
    let conf = resolv_conf(&agent, &plain)?;
    assert!(!conf.contains(&gateway.to_string()), "{conf}");
    Ok(())
}
