//! The `datapath` benchmark: HTTP through a Ferry ClusterIP against the pod IP directly and
//! against the same services as kube-proxy's iptables and nftables rules.
//!
//! Two nodes of the multi-node harness (network namespaces, real `ferry agent` processes, runc)
//! and a 1-member control plane. An image built here from this machine's binaries holds wrk
//! (the load generator) and `ferry-bench-httpd` (a minimal keep-alive HTTP/1.1 server). Backend
//! pods (`--backends`, label `app=dp-backend`) run the server on node 1; a client pod runs on
//! node 0, and every request crosses the fabric from node 0 to node 1, as between pods on two
//! machines.
//!
//! For each service count N (`--services`), the cluster holds N Services selecting the
//! backends (created through the API; the EndpointSlice controller publishes their endpoints
//! and the agents program their maps), node 0's namespace holds the same N services as
//! kube-proxy's iptables layout (KUBE-SERVICES → KUBE-SVC → KUBE-SEP, DATAPATH-NOTES §5) and as
//! its nftables layout (`table ip kube-proxy`, `service-ips` verdict map), each on its own
//! addresses. The measured service is the last of the N: the worst case for iptables' linear
//! KUBE-SERVICES chain, no different for the others.
//!
//! Modes, each measured with wrk run in the client pod (`ferry exec`, so in the pod's network
//! namespace and cgroup, where Ferry's socket load balancer applies):
//! - `direct`: the backend pod IP and port;
//! - `ferry`: the Ferry ClusterIP (socket load balancing at connect);
//! - `iptables`: kube-proxy iptables VIP, with PREROUTING → KUBE-SERVICES switched on only
//!   during these runs;
//! - `nftables`: kube-proxy nftables VIP, with the `nat-prerouting` base chain present only
//!   during these runs.
//!
//! Both kinds of traffic: a new connection per request (`Connection: close`) and keep-alive.
//! Runs are interleaved (round r: every kind, every mode, in an order rotated by r) and each
//! figure is the median over `--rounds`. Netfilter's conntrack is active in node 0's namespace in every mode once the
//! nat tables exist, as on a kube-proxy node: that costs the direct and Ferry modes a little
//! too, so the ratios against iptables and nftables are conservative.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_agent::datapath::{services::Frontend, socklb::PinnedView};
use ferry_api::client::Client;
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::{
    ConntrackMax, HTTPD_BODY, KINDS, WrkRun, errors_note, httpd_binary, median, met, rotated,
    teardown, wait_pods_ready, which, wrk,
};
use crate::programming::iptables_rules;

const IMAGE: &str = "localhost/ferry-bench/datapath:1";
/// Goals: the ClusterIP at least this fraction of the pod IP's requests/s at every count...
const GOAL_RATIO_DIRECT: f64 = 0.97;
/// ... and at least this multiple of iptables' at the largest count, new connections.
const GOAL_RATIO_IPTABLES: f64 = 1.5;
const MODES: [&str; 4] = ["direct", "ferry", "iptables", "nftables"];
/// The backend port of each mode (the server listens on all four). The server closes first
/// after `Connection: close`, so it holds a TIME_WAIT per connection, and a SYN that reuses
/// its 4-tuple is only accepted with a newer TCP timestamp. The client's timestamp offset is
/// keyed by the address it connects to (the pod IP for direct and Ferry, the VIP for the
/// kube-proxy modes), so modes sharing one port would have their SYNs rejected by each
/// other's TIME_WAITs (PAWS) and stall for a retransmission: an artefact of measuring them
/// one after the other. One port per mode keeps their 4-tuples apart.
const MODE_PORTS: [u16; 4] = [8081, 8082, 8083, 8084];
const DIRECT_PORT: u16 = MODE_PORTS[0];
const FERRY_PORT: u16 = MODE_PORTS[1];
const IPTABLES_PORT: u16 = MODE_PORTS[2];
const NFTABLES_PORT: u16 = MODE_PORTS[3];

#[derive(Args, Debug)]
pub struct DatapathArgs {
    /// Service counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10_000])]
    services: Vec<usize>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Runs per mode and kind at each count (the median is reported). Fewer than 5 let one
    /// noisy sample decide a keep-alive figure on a 2-core machine.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Concurrent connections (wrk -c), shared among the backends.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Backend pods (all on node 1). In the direct mode each gets its own wrk with its share of
    /// the connections; the other modes run as many wrk processes against the service.
    #[arg(long, default_value_t = 1)]
    backends: usize,
}

/// kube-proxy iptables VIP of service `i` of `n` (outside the cluster's service CIDR
/// 10.96.0.0/12). The measured service, the last, has the same address at every count: the
/// client's TCP timestamp offset is keyed by the address it connects to, and a new address
/// would meet the server's TIME_WAITs of the previous count with older timestamps (see
/// [`MODE_PORTS`]).
fn ipt_vip(i: usize, n: usize) -> Ipv4Addr {
    vip_in(Ipv4Addr::new(10, 128, 0, 0), i, n)
}

/// kube-proxy nftables VIP of service `i` of `n` (as [`ipt_vip`]).
fn nft_vip(i: usize, n: usize) -> Ipv4Addr {
    vip_in(Ipv4Addr::new(10, 129, 0, 0), i, n)
}

fn vip_in(base: Ipv4Addr, i: usize, n: usize) -> Ipv4Addr {
    let offset = if i + 1 == n { 0xfffe } else { 1 + i as u32 };
    Ipv4Addr::from(u32::from(base) + offset)
}

/// kube-proxy's nftables ruleset (`nft -f` input) for `n` services on port 80/TCP with
/// endpoints `eps` on `NFTABLES_PORT`, without the `nat-prerouting` base chain (see
/// [`NFT_PORTALS_ON`]). Chain names as kube-proxy's: `service-<id>-<ns>/<name>/tcp/<port>`,
/// `endpoint-<id>-<ns>/<name>/tcp/<port>__<ip>/<port>`.
fn nft_rules(n: usize, eps: &[Ipv4Addr]) -> String {
    let mut s = String::from(
        "table ip kube-proxy {
  chain mark-for-masquerade { meta mark set meta mark or 0x4000; }
  chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark xor 0x4000; masquerade fully-random; }
  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }
  map service-nodeports { type inet_proto . inet_service : verdict; }
",
    );
    let svc_chain = |i: usize| format!("service-{i:08X}-bench/svc-{i}/tcp/http");
    for i in 0..n {
        let v = nft_vip(i, n);
        let mut vmap = Vec::new();
        for (k, e) in eps.iter().enumerate() {
            let ep = format!("endpoint-{i:04X}{k:04X}-bench/svc-{i}/tcp/http__{e}/{NFTABLES_PORT}");
            let _ = writeln!(
                s,
                "  chain {ep} {{ ip saddr {e} jump mark-for-masquerade; meta l4proto tcp dnat to {e}:{NFTABLES_PORT}; }}"
            );
            vmap.push(format!("{k} : goto {ep}"));
        }
        let _ = writeln!(
            s,
            "  chain {} {{ ip daddr {v} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade; numgen random mod {} vmap {{ {} }}; }}",
            svc_chain(i),
            eps.len(),
            vmap.join(", ")
        );
    }
    s.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict;\n");
    if n > 0 {
        s.push_str("    elements = {\n");
        for i in 0..n {
            let _ = writeln!(
                s,
                "      {} . tcp . 80 : goto {},",
                nft_vip(i, n),
                svc_chain(i)
            );
        }
        s.push_str("    }\n");
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips;
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports;
  }
}
",
    );
    s
}

/// Adds kube-proxy's `nat-prerouting` base chain (traffic from pods enters the services).
const NFT_PORTALS_ON: &str = "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }
add rule ip kube-proxy nat-prerouting jump services
";
const NFT_PORTALS_OFF: &str = "flush chain ip kube-proxy nat-prerouting
delete chain ip kube-proxy nat-prerouting
";
const IPT_PORTAL: [&str; 6] = [
    "PREROUTING",
    "-m",
    "comment",
    "--comment",
    "kubernetes service portals",
    "-j",
];

/// Runs `argv` in node 0's namespace with `input` on stdin; fails with its stderr.
fn node0(fabric: &Fabric, argv: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", fabric.node(0).netns_path().display()))
        .arg("--")
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", argv[0]))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{argv:?} in node 0: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn iptables_portal(fabric: &Fabric, on: bool) -> Result<()> {
    let mut argv = vec!["iptables", "-t", "nat", if on { "-I" } else { "-D" }];
    argv.extend(IPT_PORTAL);
    argv.push("KUBE-SERVICES");
    node0(fabric, &argv, "")
}

struct Bench<'a> {
    fabric: &'a Fabric,
    client: Client,
    args: &'a DatapathArgs,
    backend_ips: Vec<Ipv4Addr>,
}

impl Bench<'_> {
    /// Runs `argv` in the client pod (its first container), returns stdout; fails on a
    /// non-zero exit.
    async fn client_exec(&self, argv: &[String], timeout_s: u32) -> Result<String> {
        ferry_tests::exec_in_pod(&self.client, "dp-client", argv, timeout_s).await
    }

    /// The targets of `mode` with `n` services: one URL per backend share.
    fn targets(&self, mode: &str, n: usize, ferry_vip: Ipv4Addr) -> Vec<String> {
        (0..self.backend_ips.len())
            .map(|k| match mode {
                "direct" => format!("http://{}:{DIRECT_PORT}/", self.backend_ips[k]),
                "ferry" => format!("http://{ferry_vip}:80/"),
                "iptables" => format!("http://{}:80/", ipt_vip(n - 1, n)),
                _ => format!("http://{}:80/", nft_vip(n - 1, n)),
            })
            .collect()
    }

    /// One measurement: a wrk per target at once, for `seconds`; requests/s summed, p99 the
    /// worst.
    async fn wrk(&self, targets: &[String], close: bool, seconds: u32) -> Result<WrkRun> {
        wrk(
            targets,
            self.args.connections,
            close,
            seconds,
            |argv| async move { self.client_exec(&argv, seconds + 60).await },
        )
        .await
    }

    /// Creates Services `svc-<have>..svc-<n-1>` selecting the backends; returns the ClusterIP
    /// of the last.
    async fn ferry_services(&self, have: usize, n: usize) -> Result<Ipv4Addr> {
        let results: Vec<Result<Value>> = futures::stream::iter(have..n)
            .map(|i| {
                let c = self.client.clone();
                async move {
                    let svc = json!({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": format!("svc-{i}")},
                        "spec": {"selector": {"app": "dp-backend"},
                                 "ports": [{"name": "http", "port": 80, "targetPort": FERRY_PORT}]}});
                    Ok(c.create("Service", "default", &svc).await?)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        let last = self
            .client
            .get("Service", "default", &format!("svc-{}", n - 1))
            .await?;
        last["spec"]["clusterIP"]
            .as_str()
            .context("svc clusterIP")?
            .parse()
            .context("svc clusterIP")
    }

    /// Waits until node 0's maps hold every backend for the first and the last service.
    async fn wait_programmed(&self, first: Ipv4Addr, last: Ipv4Addr) -> Result<()> {
        let pin = Path::new("/sys/fs/bpf/ferry").join(&self.fabric.node(0).name);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(view) = PinnedView::open(&pin)
                && [first, last].iter().all(|&addr| {
                    view.ready_backends(&Frontend::internal(addr, 80, 6))
                        .is_some_and(|b| b.len() == self.backend_ips.len())
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node 0's maps never held the services:\n{}",
                    self.fabric.agent_logs(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Loads the iptables and nftables layouts of `n` services into node 0 (replacing the
    /// previous ones), both switched off.
    fn kube_proxy_rules(&self, n: usize) -> Result<(Duration, Duration)> {
        let eps = self.backend_ips.clone();
        let rules = iptables_rules(n, |i| ipt_vip(i, n), |_| eps.clone(), IPTABLES_PORT, false);
        node0(self.fabric, &["iptables", "-t", "nat", "-F"], "")?;
        node0(self.fabric, &["iptables", "-t", "nat", "-X"], "")?;
        let started = Instant::now();
        node0(self.fabric, &["iptables-restore", "--noflush"], &rules)?;
        let ipt = started.elapsed();
        let _ = node0(
            self.fabric,
            &["nft", "delete", "table", "ip", "kube-proxy"],
            "",
        );
        let started = Instant::now();
        node0(self.fabric, &["nft", "-f", "-"], &nft_rules(n, &eps))?;
        Ok((ipt, started.elapsed()))
    }

    /// Switches `mode`'s kube-proxy rules on or off (no-op for direct and ferry).
    fn portals(&self, mode: &str, on: bool) -> Result<()> {
        match mode {
            "iptables" => iptables_portal(self.fabric, on),
            "nftables" => node0(
                self.fabric,
                &["nft", "-f", "-"],
                if on { NFT_PORTALS_ON } else { NFT_PORTALS_OFF },
            ),
            _ => Ok(()),
        }
    }

    /// Every mode answers with the server's body (a broken path fails here, not as a
    /// figure).
    async fn check(&self, mode: &str, n: usize, vip: Ipv4Addr) -> Result<()> {
        for url in self.targets(mode, n, vip) {
            let argv: Vec<String> = ["timeout", "5", "wget", "-q", "-O", "-", &url]
                .into_iter()
                .map(String::from)
                .collect();
            let body = self
                .client_exec(&argv, 30)
                .await
                .with_context(|| format!("{mode}: GET {url} from the client pod"))?;
            if body != HTTPD_BODY {
                bail!("{mode}: GET {url} answered {body:?}");
            }
        }
        Ok(())
    }

    async fn measure_mode(
        &self,
        mode: &str,
        n: usize,
        vip: Ipv4Addr,
        close: bool,
        seconds: u32,
    ) -> Result<WrkRun> {
        self.portals(mode, true)?;
        let r = self.wrk(&self.targets(mode, n, vip), close, seconds).await;
        let off = self.portals(mode, false);
        let r = r?;
        off?;
        Ok(r)
    }
}

/// Figures of one service count: (kind, mode) → runs.
type Figures = BTreeMap<(usize, usize), Vec<WrkRun>>;

pub async fn run(args: DatapathArgs) -> Result<()> {
    netns::available().map_err(anyhow::Error::msg)?;
    if args.services.is_empty() || args.services.iter().any(|&n| n == 0 || n > 60_000) {
        bail!("--services: give one or more counts from 1 to 60000, e.g. 10,1000,10000");
    }
    if args.backends == 0 || args.rounds == 0 || args.duration == 0 {
        bail!("--backends, --rounds and --duration must be at least 1");
    }
    for tool in ["wrk", "iptables-restore", "nft", "ldd"] {
        if which(tool).is_none() {
            bail!("{tool} not found: tests/bench/run datapath installs wrk, iptables and nftables");
        }
    }
    let mut fabric = Fabric::new(2).context("building the multi-node harness")?;
    let cluster = Cluster::start_on(fabric.host_ip().into(), 1, &[]).await?;
    let conntrack = ConntrackMax::raise();
    let result = measure(&mut fabric, &cluster, &args).await;
    drop(conntrack);
    teardown(fabric, cluster);
    result
}

/// The image: busybox, wrk and ferry-bench-httpd with their shared libraries.
fn build_image(path: &Path) -> Result<()> {
    let httpd = httpd_binary("datapath")?;
    let wrk = which("wrk").context("wrk not found")?;
    let mut files = image::host_binary_files(&wrk, "bin/wrk")?;
    files.extend(image::host_binary_files(&httpd, "bin/ferry-bench-httpd")?);
    image::write_busybox_archive_with(path, IMAGE, &files)
}

async fn measure(fabric: &mut Fabric, cluster: &Cluster, args: &DatapathArgs) -> Result<()> {
    let c = cluster.client();
    let archive = fabric.dir().join("datapath-image.tar");
    build_image(&archive)?;
    for i in 0..2 {
        fabric.import_image(i, &archive)?;
    }
    fabric.start_agents(cluster, &[])?;
    fabric.wait_nodes_ready(&c, Duration::from_secs(60)).await?;

    let pod = |name: &str, node: &str, labels: Value, command: Value, probe: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": labels},
               "spec": {"nodeName": node, "containers": [{
                   "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                   "command": command, "readinessProbe": probe}]}})
    };
    let mut names = Vec::new();
    for k in 0..args.backends {
        let name = format!("dp-backend-{k}");
        c.create(
            "Pod",
            "default",
            &pod(
                &name,
                &fabric.node(1).name,
                json!({"app": "dp-backend"}),
                json!(
                    ["/bin/ferry-bench-httpd"]
                        .into_iter()
                        .chain(MODE_PORTS.map(|p| p.to_string()).iter().map(String::as_str))
                        .collect::<Vec<_>>()
                ),
                json!({"tcpSocket": {"port": DIRECT_PORT}, "periodSeconds": 1}),
            ),
        )
        .await?;
        names.push(name);
    }
    c.create(
        "Pod",
        "default",
        &pod(
            "dp-client",
            &fabric.node(0).name,
            json!({"app": "dp-client"}),
            json!(["sleep", "1000000"]),
            json!({"exec": {"command": ["true"]}, "periodSeconds": 1}),
        ),
    )
    .await?;
    names.push("dp-client".into());
    let pods = wait_pods_ready(&c, &names, fabric).await?;
    let backend_ips = pods[..args.backends]
        .iter()
        .map(|p| {
            p["status"]["podIP"]
                .as_str()
                .context("backend podIP")?
                .parse::<Ipv4Addr>()
                .context("backend podIP")
        })
        .collect::<Result<Vec<_>>>()?;
    println!(
        "datapath: client pod on {} → {} backend pod(s) {:?} on {}; wrk -t1 -c{} per run, {} s × {} rounds",
        fabric.node(0).name,
        args.backends,
        backend_ips,
        fabric.node(1).name,
        args.connections,
        args.duration,
        args.rounds
    );
    let bench = Bench {
        fabric: &*fabric,
        client: c.clone(),
        args,
        backend_ips,
    };

    let mut counts = args.services.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut have = 0;
    let mut first_vip = None;
    // (count, kind, mode) → median requests/s and p99.
    let mut table: BTreeMap<(usize, usize, usize), (f64, f64, u64)> = BTreeMap::new();
    for &n in &counts {
        let started = Instant::now();
        let vip = bench.ferry_services(have, n).await?;
        let first = match first_vip {
            Some(v) => v,
            None => {
                let s = c.get("Service", "default", "svc-0").await?;
                let v: Ipv4Addr = s["spec"]["clusterIP"]
                    .as_str()
                    .context("svc-0 clusterIP")?
                    .parse()?;
                first_vip = Some(v);
                v
            }
        };
        have = n;
        bench.wait_programmed(first, vip).await?;
        let ferry_took = started.elapsed();
        let (ipt_took, nft_took) = bench.kube_proxy_rules(n)?;
        println!(
            "\n{n} services: Ferry (API create → node 0's maps) {:.1} s, iptables-restore {:.1} s, nft -f {:.1} s",
            ferry_took.as_secs_f64(),
            ipt_took.as_secs_f64(),
            nft_took.as_secs_f64()
        );
        for mode in MODES {
            bench.portals(mode, true)?;
            let checked = bench.check(mode, n, vip).await;
            bench.portals(mode, false)?;
            checked?;
        }
        // Warm-up (caches, conntrack, the servers' runtimes), not counted.
        for mode in MODES {
            bench.measure_mode(mode, n, vip, true, 1).await?;
        }
        let mut figures: Figures = BTreeMap::new();
        for round in 0..args.rounds {
            // The order rotates each round (modes, and which kind goes first), so that no mode
            // always runs first or right after another: on 2 cores, where a run sits in the
            // sequence moves figures by several percent.
            for k in rotated(KINDS.len(), round) {
                let close = KINDS[k].1;
                for m in rotated(MODES.len(), round) {
                    let mode = MODES[m];
                    let r = bench
                        .measure_mode(mode, n, vip, close, args.duration)
                        .await?;
                    eprintln!(
                        "[bench] {n} services, round {}, {}, {mode}: {:.0} req/s, p99 {:.2} ms{}",
                        round + 1,
                        KINDS[k].0,
                        r.requests_per_s,
                        r.p99_ms,
                        errors_note(r.errors)
                    );
                    figures.entry((k, m)).or_default().push(r);
                }
            }
        }
        println!("| traffic | mode | requests/s | p99 | ÷ direct | errors |");
        println!("|---|---|---:|---:|---:|---:|");
        for (k, (kind, _)) in KINDS.iter().enumerate() {
            let med = |m: usize| {
                let runs = &figures[&(k, m)];
                (
                    median(runs.iter().map(|r| r.requests_per_s).collect()),
                    median(runs.iter().map(|r| r.p99_ms).collect()),
                    runs.iter().map(|r| r.errors).sum::<u64>(),
                )
            };
            let direct = med(0).0;
            for (m, mode) in MODES.iter().enumerate() {
                let (rps, p99, errors) = med(m);
                println!(
                    "| {kind} | {mode} | {rps:.0} | {p99:.2} ms | {:.3} | {errors} |",
                    rps / direct
                );
                table.insert((n, k, m), (rps, p99, errors));
            }
        }
    }

    // The RESULT: ratio_direct the lowest over counts and kinds; the peers at the largest
    // count, new connections.
    let mut ratio_direct = f64::INFINITY;
    for &n in &counts {
        for k in 0..KINDS.len() {
            ratio_direct = ratio_direct.min(table[&(n, k, 1)].0 / table[&(n, k, 0)].0);
        }
    }
    let top = *counts.last().context("no counts")?;
    let at = |m: usize| table[&(top, 0, m)];
    let (ferry, direct, ipt, nft) = (at(1), at(0), at(2), at(3));
    let errors: u64 = table.values().map(|v| v.2).sum();
    println!(
        "\nClusterIP ÷ pod IP, lowest over counts and kinds: {ratio_direct:.3} (goal ≥ {GOAL_RATIO_DIRECT}: {})",
        met(ratio_direct >= GOAL_RATIO_DIRECT)
    );
    println!(
        "ClusterIP ÷ iptables at {top} services, new connections: {:.3} (goal ≥ {GOAL_RATIO_IPTABLES}: {}); ÷ nftables {:.3}",
        ferry.0 / ipt.0,
        met(ferry.0 / ipt.0 >= GOAL_RATIO_IPTABLES),
        ferry.0 / nft.0
    );
    println!(
        "RESULT datapath services={top} ratio_direct={ratio_direct:.3} ratio_iptables={:.3} ratio_nftables={:.3} rps_ferry={:.0} rps_direct={:.0} rps_iptables={:.0} rps_nftables={:.0} p99_ms_ferry={:.2} p99_ms_iptables={:.2} p99_ms_nftables={:.2} errors={errors}",
        ferry.0 / ipt.0,
        ferry.0 / nft.0,
        ferry.0,
        direct.0,
        ipt.0,
        nft.0,
        ferry.1,
        ipt.1,
        nft.1,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_layout_has_every_service_and_endpoint() {
        let eps = [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3)];
        let s = nft_rules(3, &eps);
        assert_eq!(s.matches("numgen random mod 2").count(), 3);
        assert_eq!(s.matches("dnat to 10.244.1.3:8084").count(), 3);
        assert!(s.contains("10.129.0.2 . tcp . 80 : goto service-00000001-bench/svc-1/tcp/http"));
        // The measured (last) service keeps its address at every count.
        assert!(
            s.contains("10.129.255.254 . tcp . 80 : goto service-00000002-bench/svc-2/tcp/http")
        );
        assert_eq!(ipt_vip(9, 10), ipt_vip(999, 1000));
        assert!(!s.contains("nat-prerouting"));
    }
}
