//! Root-only, in the multi-node harness: UDP services and session affinity.
//!
//! Two nodes run an `echo-<i>` pod each (a UDP echo server, `ferry-netcheck udp-echo`, and a
//! busybox httpd whose CGI names the pod); a client pod runs on node 0. Checked:
//! - from the client pod, datagrams to a UDP ClusterIP on an unconnected socket (`sendmsg4`)
//!   reach both pods, and every reply comes from the service address (`recvmsg4`);
//! - from the external client, datagrams to the UDP NodePort of either node come back from that
//!   node's address and port (TC translation, local and remote backends), also datagrams of
//!   4,000 bytes, which travel in fragments both ways (`FERRY_FRAG4`);
//! - masquerade: the client pod reaching a UDP echo in the external client's namespace (no
//!   route to pod addresses there) is seen from node 0's address and gets its replies;
//! - `sessionAffinity: ClientIP`: every connection of the client pod to the service reaches
//!   the same pod, while the same pods behind a Service without affinity are both reached.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/netcheck:1";
const NETCHECK: &str = env!("CARGO_BIN_EXE_ferry-netcheck");

fn echo_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": name, "labels": {"app": "echo"}},
    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "echo", "image": IMAGE,
            "command": ["sh", "-c", "ferry-netcheck udp-echo 9000 & mkdir -p /www/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $(hostname) $REMOTE_ADDR\\n' > /www/cgi-bin/who; chmod +x /www/cgi-bin/who; exec httpd -f -p 8080 -h /www"],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}})
}

async fn wait_ready(c: &Client, fabric: &Fabric, names: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready = 0;
        for n in names {
            let p = c.get("Pod", "default", n).await?;
            if p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }) {
                ready += 1;
            }
        }
        if ready == names.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pods {names:?} not Ready:\n{}", fabric.agent_logs(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries `f` until it succeeds or `secs` pass (the agents program new services within
/// milliseconds, but a test must not race them).
async fn retry<T, F, Fut>(secs: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// The pod names in `udp-ask` output lines (`<pod> <peer> from <source>`), checking that
/// every reply comes from `from`.
fn replies(out: &str, from: &str) -> Result<BTreeSet<String>> {
    let mut pods = BTreeSet::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let (reply, source) = line.rsplit_once(" from ").context("no source")?;
        if source != from {
            bail!("a reply came from {source}, not {from}: {line}");
        }
        pods.insert(reply.split(' ').next().unwrap_or("").to_string());
    }
    Ok(pods)
}

/// A child process killed (and reaped) when dropped, also when the test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scenario(fabric: &mut Fabric) -> Result<()> {
    let archive = fabric.dir().join("netcheck.tar");
    let files = image::host_binary_files(Path::new(NETCHECK), "bin/ferry-netcheck")?;
    image::write_busybox_archive_with(&archive, IMAGE, &files)?;
    for i in 0..2 {
        fabric.import_image(i, &archive)?;
    }
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let c = cluster.client();
    // The XDP fast path too: the datagrams of flows to the other node's pod take it.
    fabric.start_agents(&cluster, &["--lb-acceleration", "native"])?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(30)).await?;
    for i in 0..2 {
        c.create(
            "Pod",
            "default",
            &echo_pod(&format!("echo-{i}"), &fabric.node(i).name),
        )
        .await?;
    }
    c.create(
        "Pod",
        "default",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"nodeName": fabric.node(0).name, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "100000"]}]}}),
    )
    .await?;
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    let udp = c
        .create(
            "Service",
            "default",
            &svc(
                "echo-udp",
                json!({"type": "NodePort", "selector": {"app": "echo"},
                       "ports": [{"name": "echo", "protocol": "UDP", "port": 53, "targetPort": 9000}]}),
            ),
        )
        .await?;
    let sticky = c
        .create(
            "Service",
            "default",
            &svc(
                "web-sticky",
                json!({"selector": {"app": "echo"}, "sessionAffinity": "ClientIP",
                       "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
            ),
        )
        .await?;
    let plain = c
        .create(
            "Service",
            "default",
            &svc(
                "web",
                json!({"selector": {"app": "echo"},
                       "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
            ),
        )
        .await?;
    wait_ready(&c, fabric, &["echo-0", "echo-1", "client"]).await?;
    let ip = |s: &Value| s["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    let (udp_ip, sticky_ip, plain_ip) = (ip(&udp), ip(&sticky), ip(&plain));
    let node_port = udp["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);

    // UDP from a pod: datagrams spread over both pods, replies show the service address.
    let pods = retry(30, || async {
        let out = ferry_tests::exec_in_pod(
            &c,
            "client",
            &["ferry-netcheck", "udp-ask", &udp_ip, "53", "20"],
            30,
        )
        .await?;
        let pods = replies(&out, &format!("{udp_ip}:53"))?;
        if pods.len() < 2 {
            bail!("datagrams reached only {pods:?}:\n{out}");
        }
        Ok(pods)
    })
    .await
    .with_context(|| fabric.agent_logs(20))?;
    assert_eq!(pods, BTreeSet::from(["echo-0".into(), "echo-1".into()]));

    // Masquerade: a pod reaching outside the cluster (an echo in the external client's
    // namespace, which has no route to pod addresses) is seen from its node's address, and
    // gets the reply.
    let client_ns = format!("/run/netns/{}", fabric.client_netns());
    let mut outside = Killed(
        std::process::Command::new("nsenter")
            .arg(format!("--net={client_ns}"))
            .args([NETCHECK, "udp-echo", "9999"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let client_ip = fabric.client_ip().to_string();
    let out = retry(30, || async {
        ferry_tests::exec_in_pod(
            &c,
            "client",
            &["ferry-netcheck", "udp-ask", &client_ip, "9999", "3"],
            30,
        )
        .await
    })
    .await
    .with_context(|| {
        format!(
            "a pod reaching {client_ip}:9999:\n{}",
            fabric.agent_log_tail(0, 20)
        )
    })?;
    let node0 = fabric.node(0).ip.to_string();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let peer = line.split(' ').nth(1).unwrap_or("");
        assert!(
            peer.starts_with(&format!("{node0}:")),
            "the outside echo saw {peer}, not node 0's address: {out}"
        );
        assert!(line.ends_with(&format!(" from {client_ip}:9999")), "{out}");
    }
    assert!(fabric.datapath_counter(0, "ns_masquerade")? >= 1);
    let _ = outside.0.kill();
    let _ = outside.0.wait();

    // UDP from outside to each node's NodePort: replies come from that node's address; also
    // datagrams bigger than the MTU (fragments after the first carry no ports and are
    // translated like their first one; the echo's replies are as big).
    for i in 0..2 {
        let node_ip = fabric.node(i).ip.to_string();
        let ask = |size: &'static str| {
            let node_ip = node_ip.clone();
            let fabric = &*fabric;
            async move {
                retry(30, || async {
                    let o = fabric.client_exec(&[
                        NETCHECK,
                        "udp-ask",
                        &node_ip,
                        &node_port.to_string(),
                        "6",
                        size,
                    ])?;
                    let out = String::from_utf8_lossy(&o.stdout).into_owned();
                    if !o.status.success() {
                        bail!("{}{}", out, String::from_utf8_lossy(&o.stderr));
                    }
                    Ok(out)
                })
                .await
                .with_context(|| {
                    format!(
                        "{size}-byte datagrams to the UDP NodePort on node {i}:\n{}",
                        fabric.agent_log_tail(i, 20)
                    )
                })
            }
        };
        let xdp_before = fabric.datapath_counter(i, "ns_xdp_tx")?;
        let out = ask("0").await?;
        let pods = replies(&out, &format!("{node_ip}:{node_port}"))?;
        assert!(
            pods.iter().all(|p| p.starts_with("echo-")),
            "NodePort {node_ip}:{node_port}: {out}"
        );
        // A flow to the other node's pod (the echo saw this node's address: SNAT) is carried by
        // XDP once the next hop is known: UDP checksums fixed by hand must hold.
        let remote = out.lines().any(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|peer| peer.starts_with(&format!("{node_ip}:")))
        });
        if remote {
            let sent = fabric.datapath_counter(i, "ns_xdp_tx")? - xdp_before;
            assert!(
                sent > 0,
                "no datagram of a remote flow took the XDP fast path: {out}"
            );
        }
        let out = ask("4000").await?;
        replies(&out, &format!("{node_ip}:{node_port}"))?;
        assert_eq!(
            out.lines().filter(|l| l.contains(" 4000 from ")).count(),
            6,
            "every echo got all 4,000 bytes: {out}"
        );
    }

    // Session affinity: one pod for every connection; without it, both pods.
    let who = |ip: String| {
        let c = c.clone();
        async move {
            let out = ferry_tests::exec_in_pod(
                &c,
                "client",
                &["wget", "-q", "-O", "-", &format!("http://{ip}/cgi-bin/who")],
                30,
            )
            .await?;
            Ok::<_, anyhow::Error>(out.split(' ').next().unwrap_or("").to_string())
        }
    };
    let first = retry(30, || who(sticky_ip.clone())).await?;
    for _ in 0..10 {
        assert_eq!(
            who(sticky_ip.clone()).await?,
            first,
            "sessionAffinity ClientIP: every connection reaches {first}"
        );
    }
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(who(plain_ip.clone()).await?);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "without affinity both pods answer: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_services_and_session_affinity() -> Result<()> {
    netns::run_scenario("udp_affinity", 2, scenario).await
}
