//! The `nodeport` benchmark: HTTP from a client outside the cluster through a NodePort to
//! backends on other nodes, so that every flow is DNAT-ed and SNAT-ed by the node it enters.
//!
//! Three nodes of the multi-node harness (network namespaces on one bridge, real `ferry agent`
//! processes, runc) and a 1-member control plane. Backend pods (`ferry-bench-httpd`, from an
//! image built here) run on node 0 and node 1; node 2 has none. The client is the fabric's
//! client namespace (outside every node), where the host's wrk runs (`nsenter --net`).
//!
//! Modes, measured side by side in one run:
//! - `xdp`: Ferry's NodePort on node 2, node 2's agent started with `--lb-acceleration native`
//!   (the XDP fast path `ferry_xdp_uplink` translates and sends the packets back out);
//! - `tc`: the same NodePort, node 2's agent restarted with `--lb-acceleration disabled` (the
//!   TC programs only). The maps and TC links are pinned, so a restart keeps forwarding; the
//!   benchmark waits for the new agent's "service maps synced" log line, and checks node 2's
//!   `ns_xdp_tx` counter around every run: it must grow in `xdp` and stay put in `tc`;
//! - `iptables`: the same service as kube-proxy's iptables mode lays out a NodePort
//!   (KUBE-SERVICES → KUBE-NODEPORTS → KUBE-EXT → KUBE-SVC with `statistic` → KUBE-SEP DNAT,
//!   KUBE-MARK-MASQ + KUBE-POSTROUTING MASQUERADE), loaded with `iptables-restore` into node
//!   2's namespace on a port no Ferry Service has (Ferry's programs pass it untouched); node 2's
//!   agent runs with `--lb-acceleration disabled` during these runs;
//! - `direct`: the client to the backend pod IPs (routes to node 0's and node 1's pod CIDRs
//!   via their addresses): no translation and one node less on the way, the ceiling.
//!
//! Each mode's backends listen on their own port (see the `datapath` benchmark's
//! `MODE_PORTS`: TIME_WAITs of one mode must not meet the SYNs of another). Both kinds of
//! traffic: a new connection per request (`Connection: close`) and keep-alive. Round r visits
//! every mode in an order rotated by r, and every kind at each visit (also rotated), so that
//! noise hits all modes alike; each figure is the median over `--rounds`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_agent::datapath::{services::Frontend, socklb::PinnedView};
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use serde_json::{Value, json};

use crate::common::{
    ConntrackMax, HTTPD_BODY, KINDS, WrkRun, errors_note, httpd_binary, median, rotated,
    wait_pods_ready, which, wrk,
};

const IMAGE: &str = "localhost/ferry-bench/nodeport:1";
const MODES: [&str; 4] = ["xdp", "tc", "iptables", "direct"];
const XDP: usize = 0;
const TC: usize = 1;
const IPTABLES: usize = 2;
const DIRECT: usize = 3;
/// The backends' port of each mode (xdp and tc share the Ferry Service's target port).
const DIRECT_PORT: u16 = 8081;
const FERRY_PORT: u16 = 8082;
const IPTABLES_PORT: u16 = 8083;
/// Ferry's NodePort (set in the Service).
const NODE_PORT: u16 = 30080;
/// kube-proxy's NodePort in node 2's iptables rules: no Ferry Service has it.
const IPTABLES_NODE_PORT: u16 = 30081;
/// kube-proxy's ClusterIP of the service (its KUBE-SERVICES rule; never connected to).
const IPTABLES_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 10);
/// The cluster's pod network (`--cluster-cidr` default): kube-proxy's masquerade exception.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node the client enters; the backends are on the others.
const ENTRY: usize = 2;
const NODES: usize = 3;

#[derive(Args, Debug)]
pub struct NodeportArgs {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Runs per mode and kind (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent connections (wrk -c), split between two wrk processes (one per backend in
    /// the direct mode, both at the NodePort in the others).
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

/// A chain name suffix as kube-proxy makes them (16 characters of a hash of the service port
/// and, for endpoints, the endpoint): FNV-1a here, any stable hash will do.
fn chain_id(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// kube-proxy's iptables-restore input (nat table) for one NodePort Service `svc` (e.g.
/// `bench/np:http`): ClusterIP `cluster_ip`:`port`/TCP, NodePort `node_port`, endpoints `eps`
/// on `target_port`, pods in `cluster_cidr`, `externalTrafficPolicy: Cluster`. As kube-proxy
/// writes it: PREROUTING and OUTPUT → KUBE-SERVICES, whose last rule sends local destinations
/// to KUBE-NODEPORTS → KUBE-EXT-* (marks for masquerade) → KUBE-SVC-* (`statistic` random
/// probabilities) → KUBE-SEP-* (DNAT), and POSTROUTING → KUBE-POSTROUTING masquerading marked
/// packets. With no endpoints KUBE-SVC-* is empty (kube-proxy then rejects in the filter
/// table, which this layout leaves out).
fn nodeport_rules(
    svc: &str,
    cluster_ip: Ipv4Addr,
    port: u16,
    node_port: u16,
    eps: &[Ipv4Addr],
    target_port: u16,
    cluster_cidr: &str,
) -> String {
    let id = chain_id(&format!("{svc}/tcp"));
    let (svc_chain, ext_chain) = (format!("KUBE-SVC-{id}"), format!("KUBE-EXT-{id}"));
    let seps: Vec<String> = eps
        .iter()
        .map(|e| {
            format!(
                "KUBE-SEP-{}",
                chain_id(&format!("{svc}/tcp/{e}:{target_port}"))
            )
        })
        .collect();
    let mut s = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let _ = writeln!(s, ":{svc_chain} - [0:0]\n:{ext_chain} - [0:0]");
    for sep in &seps {
        let _ = writeln!(s, ":{sep} - [0:0]");
    }
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
",
    );
    let _ = writeln!(
        s,
        "-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp --dport {port} -j {svc_chain}"
    );
    s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    let _ = writeln!(
        s,
        "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{svc}\" -m tcp --dport {node_port} -j {ext_chain}"
    );
    let _ = writeln!(
        s,
        "-A {ext_chain} -m comment --comment \"masquerade traffic for {svc} external destinations\" -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(s, "-A {ext_chain} -j {svc_chain}");
    let _ = writeln!(
        s,
        "-A {svc_chain} ! -s {cluster_cidr} -d {cluster_ip}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
    );
    let n = eps.len();
    for (k, (e, sep)) in eps.iter().zip(&seps).enumerate() {
        let comment = format!("-m comment --comment \"{svc} -> {e}:{target_port}\"");
        if k + 1 < n {
            let p = 1.0 / (n - k) as f64;
            let _ = writeln!(
                s,
                "-A {svc_chain} {comment} -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(s, "-A {svc_chain} {comment} -j {sep}");
        }
        let _ = writeln!(
            s,
            "-A {sep} -s {e}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            s,
            "-A {sep} -p tcp -m comment --comment \"{svc}\" -m tcp -j DNAT --to-destination {e}:{target_port}"
        );
    }
    s.push_str("COMMIT\n");
    s
}

/// One measurement: wrk's figures and node 2's XDP counter.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    wrk: WrkRun,
    /// Growth of node 2's `ns_xdp_tx` counter during the run (xdp and tc modes).
    xdp_tx: u64,
}

/// The value of counter `name` in `ferry datapath services` output (its `counters:` line).
fn parse_counter(out: &str, name: &str) -> Result<u64> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("counters: "))
        .with_context(|| format!("no `counters:` line in `ferry datapath services`:\n{out}"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .with_context(|| format!("no counter {name} in {line:?}"))?
        .parse()
        .with_context(|| format!("counter {name} in {line:?}"))
}

/// The `--lb-acceleration` node 2's agent needs for `mode` (None: any).
fn acceleration_for(mode: usize) -> Option<&'static str> {
    match mode {
        XDP => Some("native"),
        TC | IPTABLES => Some("disabled"),
        _ => None,
    }
}

/// The image: busybox and ferry-bench-httpd with its shared libraries.
fn build_image(path: &Path) -> Result<()> {
    let httpd = httpd_binary("nodeport")?;
    let files = image::host_binary_files(&httpd, "bin/ferry-bench-httpd")?;
    image::write_busybox_archive_with(path, IMAGE, &files)
}

fn pod_ip(p: &Value) -> Result<Ipv4Addr> {
    p["status"]["podIP"]
        .as_str()
        .context("a backend pod has no podIP")?
        .parse()
        .context("a backend pod's podIP")
}

struct Bench<'a> {
    fabric: &'a mut Fabric,
    cluster: &'a Cluster,
    args: &'a NodeportArgs,
    backend_ips: Vec<Ipv4Addr>,
    /// Node 2's agent's current `--lb-acceleration`.
    acceleration: &'static str,
}

impl Bench<'_> {
    fn entry_ip(&self) -> Ipv4Addr {
        self.fabric.node(ENTRY).ip
    }

    /// The URLs of `mode`, one per wrk process (two).
    fn targets(&self, mode: usize) -> Vec<String> {
        let entry = self.entry_ip();
        match mode {
            XDP | TC => vec![format!("http://{entry}:{NODE_PORT}/"); 2],
            IPTABLES => vec![format!("http://{entry}:{IPTABLES_NODE_PORT}/"); 2],
            _ => self
                .backend_ips
                .iter()
                .map(|ip| format!("http://{ip}:{DIRECT_PORT}/"))
                .collect(),
        }
    }

    /// Runs `argv` in the client namespace, killed (by its PID, when the future is dropped)
    /// if it is still running after `timeout`; its stdout, or an error with its output.
    async fn client_run(&self, argv: &[String], timeout: Duration) -> Result<String> {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.fabric.client_netns()))
            .arg("--")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .with_context(|| format!("{argv:?} in the client namespace: no end after {timeout:?}"))?
            .with_context(|| format!("running {argv:?} in the client namespace"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{argv:?} in the client namespace failed ({}): {}{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// One measurement: a wrk per target at once, for `seconds`; requests/s and requests
    /// summed, p99 the worst.
    async fn wrk(&self, mode: usize, close: bool, seconds: u32) -> Result<WrkRun> {
        let timeout = Duration::from_secs(u64::from(seconds) + 60);
        wrk(
            &self.targets(mode),
            self.args.connections,
            close,
            seconds,
            |argv| async move { self.client_run(&argv, timeout).await },
        )
        .await
    }

    /// Node 2's `ns_xdp_tx` counter.
    fn xdp_tx(&self) -> Result<u64> {
        let ferry = ferry_tests::ferry_bin();
        let out = self.fabric.node_check(
            ENTRY,
            &[
                ferry
                    .to_str()
                    .context("the ferry binary's path is not UTF-8")?,
                "datapath",
                "services",
                "--node-name",
                &self.fabric.node(ENTRY).name,
            ],
        )?;
        parse_counter(&out, "ns_xdp_tx")
    }

    /// Restarts node 2's agent with `--lb-acceleration accel` unless it runs with it already,
    /// and waits until the new agent has synced its maps.
    async fn switch(&mut self, accel: &'static str) -> Result<()> {
        if self.acceleration == accel {
            return Ok(());
        }
        let syncs = |fabric: &Fabric| {
            fabric
                .agent_log_tail(ENTRY, usize::MAX)
                .matches("service maps synced")
                .count()
        };
        let before = syncs(self.fabric);
        let started = Instant::now();
        self.fabric.kill9_agent(ENTRY);
        self.fabric
            .start_agent(ENTRY, self.cluster, &["--lb-acceleration", accel])?;
        self.acceleration = accel;
        let deadline = started + Duration::from_secs(60);
        while syncs(self.fabric) <= before {
            if !self.fabric.agent_running(ENTRY) {
                bail!(
                    "node 2's agent with --lb-acceleration {accel} exited:\n{}",
                    self.fabric.agent_log_tail(ENTRY, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node 2's agent with --lb-acceleration {accel} never logged \"service maps synced\":\n{}",
                    self.fabric.agent_log_tail(ENTRY, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "[bench] node 2's agent restarted with --lb-acceleration {accel}: maps synced after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // The new agent's start-up work (informers, node status) settles before a run.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    /// Measures `mode` (node 2's agent switched as it needs first), checking node 2's
    /// `ns_xdp_tx`: it grows by at least a packet per request through XDP, stays put through
    /// TC.
    async fn measure(&mut self, mode: usize, close: bool, seconds: u32) -> Result<Run> {
        if let Some(accel) = acceleration_for(mode) {
            self.switch(accel).await?;
        }
        let before = self.xdp_tx()?;
        let wrk = self.wrk(mode, close, seconds).await?;
        let r = Run {
            wrk,
            xdp_tx: self.xdp_tx()?.saturating_sub(before),
        };
        match mode {
            XDP if r.xdp_tx < wrk.requests.max(1) => bail!(
                "xdp: node 2's ns_xdp_tx grew by {} during {} requests: the XDP fast path did not carry them\n{}",
                r.xdp_tx,
                wrk.requests,
                self.fabric.agent_log_tail(ENTRY, 20)
            ),
            TC if r.xdp_tx > 0 => bail!(
                "tc: node 2's ns_xdp_tx grew by {} with --lb-acceleration disabled: XDP is still attached",
                r.xdp_tx
            ),
            _ => {}
        }
        Ok(r)
    }

    /// Every mode answers with the server's body (a broken path fails here, not as a figure).
    async fn check(&mut self, mode: usize) -> Result<()> {
        if let Some(accel) = acceleration_for(mode) {
            self.switch(accel).await?;
        }
        for url in self.targets(mode) {
            // Several connections: through a NodePort, each may reach either backend.
            for _ in 0..4 {
                let argv: Vec<String> = ["curl", "-sS", "-m", "5", &url]
                    .into_iter()
                    .map(String::from)
                    .collect();
                let body = self
                    .client_run(&argv, Duration::from_secs(30))
                    .await
                    .with_context(|| {
                        format!(
                            "{}: GET {url} from the client\n{}",
                            MODES[mode],
                            self.fabric.agent_log_tail(ENTRY, 20)
                        )
                    })?;
                if body != HTTPD_BODY {
                    bail!("{}: GET {url} answered {body:?}", MODES[mode]);
                }
            }
        }
        Ok(())
    }
}

pub async fn run(args: NodeportArgs) -> Result<()> {
    netns::available().map_err(anyhow::Error::msg)?;
    if let Some(why) = netns::pods_skip_reason() {
        bail!("the multi-node harness cannot run here: {why}");
    }
    if args.rounds == 0 || args.duration == 0 || args.connections < 2 {
        bail!("--rounds and --duration must be at least 1, --connections at least 2");
    }
    for tool in ["wrk", "iptables-restore", "curl", "ldd"] {
        if which(tool).is_none() {
            bail!("{tool} not found: tests/bench/run nodeport installs wrk and iptables");
        }
    }
    let _conntrack = ConntrackMax::raise();
    netns::run_scenario("nodeport-bench", NODES, async |fabric: &mut Fabric| {
        measure(fabric, &args).await
    })
    .await
}

async fn measure(fabric: &mut Fabric, args: &NodeportArgs) -> Result<()> {
    let archive = fabric.dir().join("nodeport-image.tar");
    build_image(&archive)?;
    for i in 0..ENTRY {
        fabric.import_image(i, &archive)?;
    }
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let c = cluster.client();
    for i in 0..ENTRY {
        fabric.start_agent(i, &cluster, &[])?;
    }
    fabric.start_agent(ENTRY, &cluster, &["--lb-acceleration", "disabled"])?;
    let cidrs = fabric.wait_nodes_ready(&c, Duration::from_secs(60)).await?;

    let mut names = Vec::new();
    for i in 0..ENTRY {
        let name = format!("np-backend-{i}");
        let ports: Vec<String> = [DIRECT_PORT, FERRY_PORT, IPTABLES_PORT]
            .iter()
            .map(u16::to_string)
            .collect();
        let command: Vec<&str> = std::iter::once("/bin/ferry-bench-httpd")
            .chain(ports.iter().map(String::as_str))
            .collect();
        c.create(
            "Pod",
            "default",
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "np-backend"}},
                "spec": {"nodeName": fabric.node(i).name, "containers": [{
                    "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": command,
                    "readinessProbe": {"tcpSocket": {"port": DIRECT_PORT}, "periodSeconds": 1}}]}}),
        )
        .await?;
        names.push(name);
    }
    c.create(
        "Service",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "np"},
            "spec": {"type": "NodePort", "selector": {"app": "np-backend"},
                     "ports": [{"name": "http", "port": 80, "targetPort": FERRY_PORT,
                                "nodePort": NODE_PORT}]}}),
    )
    .await?;
    let pods = wait_pods_ready(&c, &names, fabric).await?;
    let backend_ips = pods.iter().map(pod_ip).collect::<Result<Vec<_>>>()?;

    // Node 2's maps hold the NodePort with both backends.
    let pin = Path::new("/sys/fs/bpf/ferry").join(&fabric.node(ENTRY).name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = PinnedView::open(&pin).ok().and_then(|v| {
            v.ready_backends(&Frontend::internal(Ipv4Addr::UNSPECIFIED, NODE_PORT, 6))
        });
        if have.as_ref().is_some_and(|b| b.len() == backend_ips.len()) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "node 2's maps never held NodePort {NODE_PORT} with {} backends (have {have:?}):\n{}",
                backend_ips.len(),
                fabric.agent_log_tail(ENTRY, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kube-proxy's NodePort in node 2's namespace, on a port Ferry does not serve.
    let rules = nodeport_rules(
        "default/np-ipt:http",
        IPTABLES_CLUSTER_IP,
        80,
        IPTABLES_NODE_PORT,
        &backend_ips,
        IPTABLES_PORT,
        CLUSTER_CIDR,
    );
    let rules_path = fabric.dir().join("kube-proxy-nodeport.rules");
    std::fs::write(&rules_path, &rules)
        .with_context(|| format!("writing {}", rules_path.display()))?;
    let rules_arg = rules_path
        .to_str()
        .context("the run directory is not UTF-8")?;
    fabric
        .node_check(ENTRY, &["iptables-restore", "--noflush", rules_arg])
        .context("loading kube-proxy's NodePort rules into node 2")?;

    // The direct mode: the client routes the pod CIDRs of node 0 and 1 via their addresses.
    for i in 0..ENTRY {
        let node = fabric.node(i);
        let cidr = cidrs
            .get(&node.name)
            .with_context(|| format!("no pod CIDR for {}", node.name))?;
        let via = node.ip.to_string();
        let out = fabric.client_exec(&["ip", "route", "add", cidr, "via", &via])?;
        if !out.status.success() {
            bail!(
                "adding the client's route to {cidr} via {via}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    println!(
        "nodeport: client {} → NodePort on {} ({}) → backend pods {:?} on {} and {}; 2 wrk -t1 -c{} per run, {} s × {} rounds",
        fabric.client_ip(),
        fabric.node(ENTRY).name,
        fabric.node(ENTRY).ip,
        backend_ips,
        fabric.node(0).name,
        fabric.node(1).name,
        (args.connections / 2).max(1),
        args.duration,
        args.rounds
    );
    let mut bench = Bench {
        fabric,
        cluster: &cluster,
        args,
        backend_ips,
        acceleration: "disabled",
    };
    // tc, iptables and direct first: the agent already runs without XDP.
    for mode in [TC, IPTABLES, DIRECT, XDP] {
        bench.check(mode).await?;
    }
    // Warm-up (caches, neighbours, the servers' runtimes), not counted.
    for mode in [XDP, DIRECT, TC, IPTABLES] {
        bench.measure(mode, true, 1).await?;
    }

    // (kind, mode) → runs.
    let mut figures: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    for round in 0..args.rounds {
        for m in rotated(MODES.len(), round) {
            for k in rotated(KINDS.len(), round) {
                let r = bench.measure(m, KINDS[k].1, args.duration).await?;
                eprintln!(
                    "[bench] round {}, {}, {}: {:.0} req/s, p99 {:.2} ms{}{}",
                    round + 1,
                    KINDS[k].0,
                    MODES[m],
                    r.wrk.requests_per_s,
                    r.wrk.p99_ms,
                    if m == XDP {
                        format!(", {} packets at XDP", r.xdp_tx)
                    } else {
                        String::new()
                    },
                    errors_note(r.wrk.errors)
                );
                figures.entry((k, m)).or_default().push(r);
            }
        }
    }

    // (kind, mode) → (median requests/s, median p99, errors, XDP packets per request).
    let med = |k: usize, m: usize| {
        let runs = &figures[&(k, m)];
        let requests: u64 = runs.iter().map(|r| r.wrk.requests).sum();
        let xdp: u64 = runs.iter().map(|r| r.xdp_tx).sum();
        (
            median(runs.iter().map(|r| r.wrk.requests_per_s).collect()),
            median(runs.iter().map(|r| r.wrk.p99_ms).collect()),
            runs.iter().map(|r| r.wrk.errors).sum::<u64>(),
            xdp as f64 / requests.max(1) as f64,
        )
    };
    println!(
        "\n| traffic | mode | requests/s | p99 | ÷ tc | ÷ direct | XDP packets/request | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (k, (kind, _)) in KINDS.iter().enumerate() {
        let (tc, direct) = (med(k, TC).0, med(k, DIRECT).0);
        for (m, mode) in MODES.iter().enumerate() {
            let (rps, p99, errors, xdp) = med(k, m);
            let xdp = if m == XDP || m == TC {
                format!("{xdp:.1}")
            } else {
                "-".into()
            };
            println!(
                "| {kind} | {mode} | {rps:.0} | {p99:.2} ms | {:.3} | {:.3} | {xdp} | {errors} |",
                rps / tc,
                rps / direct
            );
        }
    }
    let errors: u64 = figures.values().flatten().map(|r| r.wrk.errors).sum();
    if errors > 0 {
        println!("\n{errors} socket errors or non-2xx responses over every run");
    }
    let (xdp, tc, ipt, direct) = (med(0, XDP), med(0, TC), med(0, IPTABLES), med(0, DIRECT));
    println!(
        "\nnew connections: XDP ÷ TC {:.3}, XDP ÷ iptables {:.3}, XDP ÷ direct {:.3}; keep-alive: XDP ÷ TC {:.3}",
        xdp.0 / tc.0,
        xdp.0 / ipt.0,
        xdp.0 / direct.0,
        med(1, XDP).0 / med(1, TC).0
    );
    println!(
        "RESULT nodeport nodes={NODES} xdp_rps={:.0} tc_rps={:.0} iptables_rps={:.0} direct_rps={:.0} ratio_xdp_tc={:.3} ratio_xdp_iptables={:.3} xdp_p99_ms={:.2} tc_p99_ms={:.2} iptables_p99_ms={:.2}",
        xdp.0,
        tc.0,
        ipt.0,
        direct.0,
        xdp.0 / tc.0,
        xdp.0 / ipt.0,
        xdp.1,
        tc.1,
        ipt.1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_is_parsed() {
        let out = "FRONTEND  BACKENDS\n*:30080 (NodePort)  2\ncounters: translated=3 ns_xdp_tx=1234 ns_xdp_drop=0\n";
        assert_eq!(parse_counter(out, "ns_xdp_tx").unwrap(), 1234);
        assert_eq!(parse_counter(out, "ns_xdp_drop").unwrap(), 0);
        // A name that is a prefix of another is not confused with it.
        assert!(parse_counter(out, "ns_xdp").is_err());
        assert!(parse_counter("no counters here", "ns_xdp_tx").is_err());
    }

    #[test]
    fn kube_proxy_nodeport_layout() {
        let rules = |eps: &[Ipv4Addr]| {
            nodeport_rules(
                "default/np:http",
                Ipv4Addr::new(10, 128, 0, 10),
                80,
                30081,
                eps,
                8083,
                "10.244.0.0/16",
            )
        };
        let eps = [Ipv4Addr::new(10, 244, 0, 5), Ipv4Addr::new(10, 244, 1, 7)];
        let s = rules(&eps);
        assert!(s.starts_with("*nat\n") && s.ends_with("COMMIT\n"));
        let id = chain_id("default/np:http/tcp");
        let (svc, ext) = (format!("KUBE-SVC-{id}"), format!("KUBE-EXT-{id}"));
        // Every chain used is declared, once.
        for chain in [
            svc.as_str(),
            ext.as_str(),
            "KUBE-NODEPORTS",
            "KUBE-MARK-MASQ",
        ] {
            assert_eq!(
                s.matches(&format!(":{chain} - [0:0]")).count(),
                1,
                "{chain}"
            );
        }
        assert_eq!(s.matches(":KUBE-SEP-").count(), 2);
        // The path: KUBE-SERVICES (NodePorts last) → KUBE-NODEPORTS → KUBE-EXT → KUBE-SVC.
        let nodeports = s
            .find("--dst-type LOCAL -j KUBE-NODEPORTS")
            .expect("nodeports jump");
        let cluster_ip = s.find("-A KUBE-SERVICES -d 10.128.0.10/32").unwrap();
        assert!(cluster_ip < nodeports);
        assert!(s.contains(&format!("-m tcp --dport 30081 -j {ext}\n")));
        assert!(s.contains(&format!("-A {ext} -m comment --comment \"masquerade traffic for default/np:http external destinations\" -j KUBE-MARK-MASQ\n")));
        assert!(s.contains(&format!("-A {ext} -j {svc}\n")));
        // Two endpoints: the first with probability 1/2, the last unconditional.
        assert_eq!(s.matches("--probability 0.5000000000").count(), 1);
        assert_eq!(s.matches("-m statistic").count(), 1);
        assert!(s.contains("-j DNAT --to-destination 10.244.0.5:8083\n"));
        assert!(s.contains("-j DNAT --to-destination 10.244.1.7:8083\n"));
        assert!(s.contains("-j MASQUERADE --random-fully\n"));
        // Three endpoints: 1/3, then 1/2, then the rest.
        let three = [eps[0], eps[1], Ipv4Addr::new(10, 244, 1, 8)];
        let s3 = rules(&three);
        assert!(
            s3.find("--probability 0.3333333333").unwrap()
                < s3.find("--probability 0.5000000000").unwrap()
        );
        // Chain names fit iptables' 28 characters and differ per endpoint.
        let seps: Vec<&str> = s3
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(seps.iter().all(|c| c.len() <= 28), "{seps:?}");
        let mut uniq = seps.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), seps.len());
    }

    #[test]
    fn modes_get_their_acceleration() {
        assert_eq!(acceleration_for(XDP), Some("native"));
        assert_eq!(acceleration_for(TC), Some("disabled"));
        assert_eq!(acceleration_for(IPTABLES), Some("disabled"));
        assert_eq!(acceleration_for(DIRECT), None);
    }
}
