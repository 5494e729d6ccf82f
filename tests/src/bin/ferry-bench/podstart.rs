//! The `podstart` benchmark: how long a pod takes from create to Ready on real agents.
//!
//! Everything runs on this machine: the multi-node harness (`ferry_tests::netns::Fabric`,
//! `--nodes` network namespaces, each running a real `ferry agent` with runc), a 1-member
//! control plane in the host namespace (scheduler included), and the busybox image built here
//! and imported into every agent's data directory beforehand (no image pull, as Kubernetes'
//! pod startup SLO excludes pulls). Once every node is Ready and every agent runs its pods, a
//! watch on pods is opened and `--pods` pods (busybox httpd, small requests, no `nodeName`:
//! the scheduler spreads them) are created by `--clients` clients, all at once or at `--rate`
//! pods per second.
//!
//! Per pod: the client's clock just before its create is sent, and the watch's arrival times
//! of the first version bound to a node, the first with the container running, and the first
//! with the Ready condition True. Latency = Ready observed - create sent (creationTimestamp
//! has one-second granularity, so the client's clock is used). Teardown (`Fabric::teardown`:
//! `ferry agent --cleanup` on every node) removes every container, mount and namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_api::client::{Client, ListOptions};
use ferry_tests::netns::{self, Fabric};
use ferry_tests::{Cluster, image};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::{wait_default_namespace, watch_pods};

const IMAGE: &str = "localhost/ferry-bench/busybox:1";
/// Kubernetes' pod startup SLO (p99, stateless pods, image pull excluded).
const SLO_P99_MS: f64 = 5000.0;
/// This project's goal for p99.
const GOAL_P99_MS: f64 = 1000.0;
/// Sequential `runc run`s timed for the runc floor.
const RUNC_SAMPLES: u32 = 10;

#[derive(Args, Debug)]
pub struct PodstartArgs {
    /// Pods to start.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Simulated nodes (network namespaces, a real agent each).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Pods created per second; 0 creates them all at once (a burst, `--clients` at a time).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Concurrent clients creating pods in a burst.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Pin pods to nodes round-robin with spec.nodeName instead of leaving them to the
    /// scheduler.
    #[arg(long)]
    pin: bool,
    /// Give every pod an HTTP readiness probe (period 1 s); without one a pod is Ready once
    /// its container runs.
    #[arg(long)]
    probe: bool,
    /// FERRY_LOG of the agents (`debug` adds the `pod network set up` lines, which split the
    /// agent stage table's network step out).
    #[arg(long, default_value = "info")]
    agent_log: String,
    /// Copy the agents' logs into this directory before teardown.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Seconds to wait for every pod to be Ready before giving up.
    #[arg(long, default_value_t = 180.0)]
    timeout: f64,
}

fn check_args(args: &PodstartArgs) -> Result<()> {
    if args.pods == 0 || args.pods > 300 {
        bail!("--pods: {} is out of range (1..=300)", args.pods);
    }
    if args.nodes == 0 || args.nodes > 10 {
        bail!("--nodes: {} is out of range (1..=10)", args.nodes);
    }
    if !(0.0..=1000.0).contains(&args.rate) {
        bail!("--rate: {} is out of range (0..=1000 pods/s)", args.rate);
    }
    if args.clients == 0 || args.clients > 100 {
        bail!("--clients: {} is out of range (1..=100)", args.clients);
    }
    if !(args.timeout >= 1.0 && args.timeout <= 3600.0) {
        bail!("--timeout: {} is out of range (1..=3600 s)", args.timeout);
    }
    Ok(())
}

/// Why the benchmark cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if let Err(why) = netns::available() {
        return Some(why);
    }
    if image::busybox().is_none() {
        return Some("busybox-static is not installed (bash .ci/setup installs it)".into());
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"];
    if !runc.iter().any(|p| std::path::Path::new(p).exists()) {
        return Some("runc is not installed (bash .ci/setup installs it)".into());
    }
    None
}

fn pod_name(i: usize) -> String {
    format!("ps-{i:04}")
}

fn pod_index(name: &str) -> Option<usize> {
    name.strip_prefix("ps-")?.parse().ok()
}

fn pod(i: usize, node: Option<&str>, probe: bool) -> Value {
    let mut c = json!({
        "name": "web", "image": IMAGE,
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    });
    if probe {
        c["readinessProbe"] =
            json!({"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1});
    }
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(i), "labels": {"app": "podstart"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [c]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

/// What the watch saw of one pod (arrival times of the first event showing each stage).
#[derive(Debug, Clone, Default)]
struct Seen {
    node: String,
    uid: String,
    bound: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
}

fn is_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn is_running(p: &Value) -> bool {
    p.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object()))
}

/// Percentiles over a list of milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default)]
struct Dist {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    };
    Dist {
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: pct(1.0),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits until every agent logged that it runs its node's pods.
async fn wait_agents_running_pods(fabric: &Fabric, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: Vec<usize> = (0..fabric.nodes().len())
            .filter(|&i| {
                !fabric
                    .agent_log_tail(i, usize::MAX)
                    .contains("running this node's pods")
            })
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agents of nodes {waiting:?} do not run pods after {timeout:?}\n{}",
                fabric.agent_logs(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: PodstartArgs) -> Result<()> {
    check_args(&args)?;
    if let Some(why) = unavailable() {
        bail!("the podstart benchmark cannot run here: {why}");
    }
    println!(
        "podstart benchmark: {} pods (busybox httpd{}, requests cpu 10m memory 16Mi) on {} nodes, {}, {}",
        args.pods,
        if args.probe {
            ", HTTP readiness probe"
        } else {
            ""
        },
        args.nodes,
        if args.pin {
            "pinned round-robin with spec.nodeName"
        } else {
            "placed by the scheduler"
        },
        if args.rate > 0.0 {
            format!("created at {} pods/s", args.rate)
        } else {
            format!("created at once by {} clients", args.clients)
        }
    );
    let mut fabric = Fabric::new(args.nodes).context("building the multi-node harness")?;
    fabric.set_agent_log_level(&args.agent_log);
    // The control plane outlives the agents: it is stopped after the teardown below.
    let mut cluster = None;
    let result = measure(&args, &mut fabric, &mut cluster).await;
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir)?;
        for i in 0..fabric.nodes().len() {
            let to = dir.join(format!("{}.log", fabric.node(i).name));
            std::fs::write(&to, fabric.agent_log_tail(i, usize::MAX))?;
        }
        println!("[bench] agent logs copied to {}", dir.display());
    }
    let t = Instant::now();
    let left = fabric.teardown();
    println!(
        "[bench] teardown (ferry agent --cleanup on every node) took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(cluster);
    if !left.is_empty() {
        eprintln!("[bench] left after teardown (removed by force): {left:#?}");
    }
    let (line, summary) = result?;
    println!("{summary}");
    println!("{line}");
    Ok(())
}

/// Starts the cluster (into `cluster`) and the agents on `fabric`, runs the measurement;
/// returns the RESULT line and the summary. The caller tears the fabric down, then stops the
/// cluster.
async fn measure(
    args: &PodstartArgs,
    fabric: &mut Fabric,
    cluster: &mut Option<Cluster>,
) -> Result<(String, String)> {
    let n = args.nodes;
    let runc_cpu = runc_floor(fabric.dir()).context("measuring runc alone")?;
    let archive = fabric.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    for i in 0..n {
        fabric.import_image(i, &archive)?;
    }
    let cluster = cluster.insert(
        Cluster::start_on(fabric.host_ip().into(), 1, &[])
            .await
            .context("starting the control plane")?,
    );
    println!(
        "[bench] member {} pid {}; harness {} ({} nodes)",
        cluster.members[0].addr,
        cluster.members[0].pid().unwrap_or(0),
        fabric.prefix(),
        n
    );
    let admin = cluster.member_client(0);
    // Agents are started from this (the runtime's main) thread: their parent-death signal
    // follows the spawning thread.
    fabric.start_agents(cluster, &[])?;
    fabric
        .wait_nodes_ready(&admin, Duration::from_secs(60))
        .await?;
    wait_agents_running_pods(fabric, Duration::from_secs(60)).await?;
    wait_default_namespace(&admin).await?;
    // Let the nodes' first status writes and the controllers settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let total = args.pods;
    let mut watch = watch_pods(&admin).await?;
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<Seen> = vec![Seen::default(); total];
        let mut ready = 0usize;
        while ready < total {
            let ev = match watch.next().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => bail!("pod watch failed: {e}"),
                None => bail!("pod watch ended after {ready} Ready pods"),
            };
            let at = Instant::now();
            let p = &ev.object;
            let Some(s) = p
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .and_then(pod_index)
                .and_then(|i| seen.get_mut(i))
            else {
                continue;
            };
            if let Some(node) = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                && s.bound.is_none()
            {
                s.bound = Some(at);
                s.node = node.to_owned();
                s.uid = p
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
            }
            if s.running.is_none() && is_running(p) {
                s.running = Some(at);
            }
            if s.ready.is_none() && is_ready(p) {
                s.ready = Some(at);
                ready += 1;
            }
        }
        Ok(seen)
    });

    let clients: Vec<Client> = (0..args.clients)
        .map(|_| cluster.member_client(0))
        .collect();
    let names: Vec<String> = fabric.nodes().iter().map(|n| n.name.clone()).collect();
    println!("[bench] creating {total} pods");
    let cpu_before = cpu_times();
    let start = Instant::now();
    let start_wall = SystemTime::now();
    let mut sent: Vec<Option<Instant>> = vec![None; total];
    let mut acked: Vec<Option<Instant>> = vec![None; total];
    let creates = futures::stream::iter((0..total).map(|i| {
        let c = clients[i % clients.len()].clone();
        let node = args.pin.then(|| names[i % names.len()].clone());
        let due = (args.rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 / args.rate));
        let probe = args.probe;
        async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            let t = Instant::now();
            c.create("Pod", "default", &pod(i, node.as_deref(), probe))
                .await
                .with_context(|| format!("creating pod {}", pod_name(i)))?;
            anyhow::Ok((i, t, Instant::now()))
        }
    }));
    // Paced creates must not queue behind each other: allow as many in flight as there are pods.
    let in_flight = if args.rate > 0.0 { total } else { args.clients };
    let mut creates = creates.buffer_unordered(in_flight);
    while let Some(r) = creates.next().await {
        let (i, t, a) = r?;
        sent[i] = Some(t);
        acked[i] = Some(a);
    }
    let create_s = start.elapsed().as_secs_f64();
    println!("[bench] {total} pods created in {create_s:.2} s");
    let timeout = Duration::from_secs_f64(args.timeout);
    let seen = match tokio::time::timeout(timeout, watcher).await {
        Ok(r) => r.context("the watch task failed")??,
        Err(_) => {
            let pods = admin.list("Pod", &ListOptions::default()).await?;
            let ready = pods["items"]
                .as_array()
                .map(|a| a.iter().filter(|p| is_ready(p)).count())
                .unwrap_or(0);
            bail!(
                "only {ready} of {total} pods were Ready after {timeout:?}\n{}",
                fabric.agent_logs(20)
            );
        }
    };
    let cpu_after = cpu_times();
    let all_ready = seen
        .iter()
        .filter_map(|s| s.ready)
        .max()
        .unwrap_or(start)
        .duration_since(start);

    // Per-pod figures, from the client's clock.
    let mut total_ms = Vec::new();
    let (mut api_ms, mut bind_ms, mut run_ms, mut ready_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..total {
        let (Some(t), Some(a), s) = (sent[i], acked[i], &seen[i]) else {
            continue;
        };
        let (Some(b), Some(r)) = (s.bound, s.ready) else {
            continue;
        };
        *per_node.entry(s.node.clone()).or_default() += 1;
        total_ms.push(ms(r.duration_since(t)));
        api_ms.push(ms(a.duration_since(t)));
        bind_ms.push(ms(b.saturating_duration_since(t)));
        // A pod can show up Running and Ready in the same event: then running = ready.
        let running = s.running.unwrap_or(r);
        run_ms.push(ms(running.saturating_duration_since(b)));
        ready_ms.push(ms(r.saturating_duration_since(running)));
    }
    let d = dist(total_ms);
    let rows = [
        ("create sent -> create acknowledged", dist(api_ms)),
        ("create sent -> bound (watch)", dist(bind_ms)),
        ("bound -> container running (watch)", dist(run_ms)),
        ("running -> Ready (watch)", dist(ready_ms)),
        ("create sent -> Ready (watch)", d),
    ];
    let mut out = String::new();
    out.push_str(&table("as the client sees it", &rows));
    let wall = |at: Instant| start_wall + at.duration_since(start);
    let sent_wall: Vec<Option<SystemTime>> = sent.iter().map(|t| t.map(wall)).collect();
    let ready_wall: Vec<Option<SystemTime>> = seen.iter().map(|s| s.ready.map(wall)).collect();
    out.push_str(&table(
        "on the agents (files and logs; same clock)",
        &agent_stages(fabric, &seen, &sent_wall, &ready_wall),
    ));
    if let (Some((busy0, all0)), Some((busy1, all1))) = (cpu_before, cpu_after) {
        let (busy, all) = (busy1.saturating_sub(busy0), all1.saturating_sub(all0));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // /proc/stat counts in USER_HZ ticks, 100 per second on Linux.
        out.push_str(&format!(
            "\nmachine CPU while pods started: {:.0}% busy of {cpus} CPUs ({:.2} CPU-seconds, \
             {:.0} ms per pod; everything on the machine counts, other load included)",
            if all > 0 {
                busy as f64 * 100.0 / all as f64
            } else {
                0.0
            },
            busy as f64 / 100.0,
            busy as f64 * 10.0 / total as f64,
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    out.push_str(&format!(
        "\nrunc alone: {:.1} ms of CPU per container ({RUNC_SAMPLES} sequential `runc run` of \
         /bin/true on an overlay root, measured before the agents started), so {total} starts \
         need at least {:.2} s of the machine's {cpus} CPUs for runc alone",
        ms(runc_cpu),
        runc_cpu.as_secs_f64() * total as f64 / cpus as f64,
    ));
    out.push_str(&format!(
        "\npods per node: {}\nall {total} Ready {:.2} s after the first create; p99 {:.0} ms: {} the goal of {GOAL_P99_MS:.0} ms, {} Kubernetes' SLO of {SLO_P99_MS:.0} ms",
        per_node
            .iter()
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" "),
        all_ready.as_secs_f64(),
        d.p99,
        if d.p99 <= GOAL_P99_MS { "meets" } else { "misses" },
        if d.p99 <= SLO_P99_MS { "meets" } else { "misses" },
    ));
    Ok((result_line(total, n, &d, runc_cpu), out))
}

/// The CPU time runc itself takes per container on this machine: [`RUNC_SAMPLES`] sequential
/// `runc run` of `/bin/true` (no network, no limits) on an overlay root over a busybox layer,
/// as the agents' containers are set up; `runc`, `runc init` and the container process are
/// counted (the children's rusage). Everything lives under `dir`; `runc run` without `--keep`
/// deletes each container and its cgroup when it exits.
fn runc_floor(dir: &Path) -> Result<Duration> {
    use ferry_agent::runtime::{ContainerSpec, OverlayDirs, spec};
    use nix::sys::resource::{UsageWho, getrusage};
    let cpu = || -> Result<Duration> {
        let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
        };
        Ok(t(u.user_time()) + t(u.system_time()))
    };
    let base = dir.join("runc-floor");
    let lower = base.join("lower");
    for d in ["bin", "dev", "etc", "proc", "sys"] {
        std::fs::create_dir_all(lower.join(d))?;
    }
    let busybox = image::busybox().context("busybox-static is not installed")?;
    std::fs::copy(&busybox, lower.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", lower.join("bin/true"))?;
    let state = base.join("state");
    let mut total = Duration::ZERO;
    for i in 0..RUNC_SAMPLES {
        let id = format!("ferry-bench-floor-{}-{i}", std::process::id());
        let bundle = base.join(&id);
        let c = ContainerSpec {
            id: id.clone(),
            rootfs: lower.clone(),
            overlay: Some(OverlayDirs {
                upper: bundle.join("upper"),
                work: bundle.join("work"),
            }),
            args: vec!["/bin/true".into()],
            log_path: bundle.join("log"),
            ..Default::default()
        };
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(bundle.join(d))?;
        }
        let config = spec::build(
            &c,
            &spec::SpecContext {
                cgroups_path: &Path::new("/").join(&id),
                swap_accounting: false,
                overlay_root: &bundle.join("rootfs"),
            },
        )?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
        let before = cpu()?;
        let out = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .context("running runc")?;
        total += cpu()?.saturating_sub(before);
        if !out.status.success() {
            bail!(
                "runc run {id}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    std::fs::remove_dir_all(&base)?;
    Ok(total / RUNC_SAMPLES)
}

/// (busy, total) ticks of all CPUs from /proc/stat (busy excludes idle and iowait).
fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

fn table(title: &str, rows: &[(&str, Dist)]) -> String {
    let mut out = format!(
        "\n{:<52} | {:>7} {:>7} {:>7} {:>7}\n{}\n",
        format!("{title} (ms)"),
        "p50",
        "p90",
        "p99",
        "max",
        "-".repeat(86)
    );
    for (what, x) in rows {
        out.push_str(&format!(
            "{what:<52} | {:>7.0} {:>7.0} {:>7.0} {:>7.0}\n",
            x.p50, x.p90, x.p99, x.max
        ));
    }
    out
}

/// Timestamps of `pod network set up` lines (agent log at `FERRY_LOG=debug`), by pod name.
fn network_times(log: &str) -> BTreeMap<String, SystemTime> {
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("pod network set up")) {
        let plain = strip_ansi(line);
        let Some(at) = plain.split_whitespace().next().and_then(parse_utc) else {
            continue;
        };
        let Some(pod) = plain
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pod=default/"))
        else {
            continue;
        };
        out.entry(pod.to_owned()).or_insert(at);
    }
    out
}

/// `2026-11-27T12:57:43.925927Z` (the agent log's UTC timestamps) as a time.
fn parse_utc(t: &str) -> Option<SystemTime> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u64>().ok()?;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where each pod's time went on its agent, from what the agent leaves on disk: the pod's
/// `pods/<uid>/pod.json` (written when its worker first syncs it), the container bundle's
/// `config.json` (written after the network, image and root filesystem are ready, right
/// before runc runs) and `pid` (written by runc once the container's process runs), plus the
/// `pod network set up` log line when the agents log at debug level. Every process runs on
/// this machine, so file times and the client's clock compare.
fn agent_stages(
    fabric: &Fabric,
    seen: &[Seen],
    sent: &[Option<SystemTime>],
    ready: &[Option<SystemTime>],
) -> Vec<(&'static str, Dist)> {
    let nets: Vec<BTreeMap<String, SystemTime>> = (0..fabric.nodes().len())
        .map(|i| network_times(&fabric.agent_log_tail(i, usize::MAX)))
        .collect();
    let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let gap = |a: SystemTime, b: SystemTime| ms(b.duration_since(a).unwrap_or_default());
    let (mut pickup, mut net, mut bundle, mut runc, mut report) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, s) in seen.iter().enumerate() {
        let Some(node) = fabric.nodes().iter().position(|n| n.name == s.node) else {
            continue;
        };
        let dir = fabric.agent_data_dir(node);
        let bundle_dir = dir
            .join("runtime/containers")
            .join(format!("{}_web_0", s.uid));
        let (Some(t0), Some(synced), Some(config), Some(pid), Some(r)) = (
            sent[i],
            mtime(dir.join("pods").join(&s.uid).join("pod.json")),
            mtime(bundle_dir.join("config.json")),
            mtime(bundle_dir.join("pid")),
            ready[i],
        ) else {
            continue;
        };
        pickup.push(gap(t0, synced));
        match nets[node].get(&pod_name(i)) {
            Some(&n) => {
                net.push(gap(synced, n));
                bundle.push(gap(n, config));
            }
            None => bundle.push(gap(synced, config)),
        }
        runc.push(gap(config, pid));
        report.push(gap(pid, r));
    }
    let mut rows = vec![(
        "create sent -> agent's worker starts (pod.json)",
        dist(pickup),
    )];
    if net.is_empty() {
        rows.push((
            "-> network, image, rootfs ready (bundle config)",
            dist(bundle),
        ));
    } else {
        rows.push(("-> pod network set up (debug log)", dist(net)));
        rows.push(("-> image, rootfs ready (bundle config)", dist(bundle)));
    }
    rows.push(("-> container process runs (runc's pid file)", dist(runc)));
    rows.push(("-> Ready observed (status write, watch)", dist(report)));
    rows
}

/// `RESULT podstart pods=100 nodes=3 p50_ms=X p99_ms=X runc_cpu_ms=X` (the last: runc's own
/// CPU per container, [`runc_floor`]).
fn result_line(pods: usize, nodes: usize, d: &Dist, runc_cpu: Duration) -> String {
    format!(
        "RESULT podstart pods={pods} nodes={nodes} p50_ms={:.0} p99_ms={:.0} runc_cpu_ms={:.1}",
        d.p50,
        d.p99,
        ms(runc_cpu)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_shape() {
        let d = Dist {
            p50: 312.4,
            p99: 871.6,
            ..Default::default()
        };
        assert_eq!(
            result_line(100, 3, &d, Duration::from_micros(23_450)),
            "RESULT podstart pods=100 nodes=3 p50_ms=312 p99_ms=872 runc_cpu_ms=23.4"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = dist((1..=100).map(f64::from).collect());
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
    }

    #[test]
    fn log_timestamps_parse() {
        let t = parse_utc("2026-11-27T12:57:43.925927Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_784_263);
        assert_eq!(d.subsec_nanos(), 925_927_000);
        assert_eq!(
            strip_ansi("\u{1b}[2m2026-11-27T12:57:43Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026-11-27T12:57:43Z  INFO x"
        );
        let line = "\u{1b}[2m2026-11-27T12:57:43.5Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m \u{1b}[2mferry_agent::network\u{1b}[0m\u{1b}[2m:\u{1b}[0m pod network set up \u{1b}[3mpod\u{1b}[0m\u{1b}[2m=\u{1b}[0mdefault/ps-0007 \u{1b}[3mip\u{1b}[0m\u{1b}[2m=\u{1b}[0m10.244.0.9";
        let m = network_times(line);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m.contains_key("ps-0007"));
    }

    #[test]
    fn pod_names_round_trip() {
        assert_eq!(pod_index(&pod_name(99)), Some(99));
        assert_eq!(pod_index("web-0"), None);
    }
}
