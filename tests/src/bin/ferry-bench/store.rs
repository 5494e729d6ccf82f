//! The `store` benchmark: replicated writes of fixed-size objects, Ferry against etcd.
//!
//! Both systems get the same workload: 3 members on loopback with their data directories on the
//! same file system, the same number of concurrent clients (each with its own HTTP/2 connection),
//! every client writing a new unique key, one write at a time, back to back. A Ferry write is an
//! API create of a ConfigMap whose stored JSON is exactly `--size` bytes; an etcd write is a v3
//! `KV.Put` of a `--size`-byte value. Each step runs a warm-up, then a measured window; only
//! writes that complete inside the window count (throughput) and give latencies.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ferry_api::client::Client;
use ferry_tests::Cluster;
use serde_json::Value;

use crate::etcd::{EtcdClient, EtcdCluster, etcd_bin, etcd_version};

/// A write that has not answered after this long counts as an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Concurrent clients per step, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per object (Ferry: the stored JSON of the ConfigMap; etcd: the value).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Where clients connect: every client to the leader, or client i to member i mod n.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    target: Target,
    /// Measure only one system (for profiling); no RESULT line is printed then.
    #[arg(long, value_enum)]
    only: Option<System>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Leader,
    Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Ferry,
    Etcd,
}

/// The figures of one step.
#[derive(Debug, Clone, Default)]
struct Step {
    clients: usize,
    writes: usize,
    errors: usize,
    first_error: Option<String>,
    wps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// One client's connection and the object it writes.
enum Writer {
    Ferry { client: Client, value: String },
    Etcd { client: EtcdClient, value: Vec<u8> },
}

impl Writer {
    async fn write(&mut self, name: &str) -> Result<(), String> {
        let fut = async {
            match self {
                Writer::Ferry { client, value } => client
                    .create("ConfigMap", "default", &ferry_tests::configmap(name, value))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Writer::Etcd { client, value } => client
                    .put(
                        format!("/configmaps/default/{name}").into_bytes(),
                        value.clone(),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
        }
    }
}

/// Object names of one fixed width, so every Ferry object has exactly the calibrated size.
fn object_name(step: usize, client: usize, seq: u64) -> String {
    format!("w{step}-{client:03}-{seq:08}")
}

pub async fn run(args: StoreArgs, ferry_bin: &Path) -> Result<()> {
    check_args(&args)?;
    let etcd = match args.only {
        Some(System::Ferry) => None,
        _ => Some(etcd_bin()?),
    };
    let temp = std::env::temp_dir();
    warn_if_tmpfs(&temp);
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);

    println!("store benchmark: writes of {}-byte objects", args.size);
    println!(
        "  {} members per cluster on loopback, data under {}, clients -> {}, {} s warm-up + {} s measured per step",
        args.members,
        temp.display(),
        match args.target {
            Target::Leader => "the leader",
            Target::Spread => "all members (round robin)",
        },
        args.warmup,
        args.duration
    );
    println!("  ferry: {}", ferry_bin.display());
    if let Some(bin) = &etcd {
        println!("  etcd:  {} ({})", bin.display(), etcd_version(bin));
    }

    let ferry_steps = if args.only != Some(System::Etcd) {
        Some(run_ferry(&args, warmup, measure).await?)
    } else {
        None
    };
    let etcd_steps = match &etcd {
        Some(bin) => Some(run_etcd(&args, bin, warmup, measure).await?),
        None => None,
    };
    println!();
    print_table(&args.clients, ferry_steps.as_deref(), etcd_steps.as_deref());
    if let (Some(f), Some(e)) = (&ferry_steps, &etcd_steps) {
        println!("{}", result_line(f, e));
    }
    Ok(())
}

fn check_args(args: &StoreArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.len() > 10 {
        bail!("--clients: give 1 to 10 comma-separated counts");
    }
    if let Some(c) = args.clients.iter().find(|c| **c == 0 || **c > 999) {
        bail!("--clients: {c} is out of range (1..=999)");
    }
    if !(args.warmup >= 0.0 && args.warmup <= 600.0) {
        bail!("--warmup: {} is out of range (0..=600 s)", args.warmup);
    }
    if !(args.duration >= 0.1 && args.duration <= 3600.0) {
        bail!(
            "--duration: {} is out of range (0.1..=3600 s)",
            args.duration
        );
    }
    if args.members == 0 || args.members > 9 {
        bail!("--members: {} is out of range (1..=9)", args.members);
    }
    if args.size == 0 || args.size > 512 * 1024 {
        bail!("--size: {} is out of range (1..=524288 bytes)", args.size);
    }
    Ok(())
}

/// fsync on tmpfs is free, which would make the comparison meaningless.
fn warn_if_tmpfs(dir: &Path) {
    if let Ok(st) = nix::sys::statfs::statfs(dir)
        && st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
    {
        eprintln!(
            "warning: {} is on tmpfs, where fsync costs nothing; set TMPDIR to a directory on a real disk",
            dir.display()
        );
    }
}

async fn run_ferry(args: &StoreArgs, warmup: Duration, measure: Duration) -> Result<Vec<Step>> {
    println!("\n[ferry] starting {} members", args.members);
    let cluster = Cluster::start(args.members, &[])
        .await
        .context("starting the Ferry cluster")?;
    let leader = cluster.leader().await?;
    for (i, m) in cluster.members.iter().enumerate() {
        println!(
            "[ferry] member {} pid {}{}",
            m.addr,
            m.pid().unwrap_or(0),
            if i == leader { " (leader)" } else { "" }
        );
    }
    let value = calibrate_ferry(&cluster.member_client(leader), args.size).await?;
    let mut steps = Vec::new();
    for (step, &clients) in args.clients.iter().enumerate() {
        // Leadership can move between steps (it should not on an idle loopback cluster).
        let leader = cluster.leader().await?;
        let writers = (0..clients)
            .map(|i| {
                let member = match args.target {
                    Target::Leader => leader,
                    Target::Spread => i % cluster.members.len(),
                };
                Ok(Writer::Ferry {
                    client: cluster.member_client(member),
                    value: value.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let s = run_step(writers, step, warmup, measure).await?;
        report("ferry", &s);
        steps.push(s);
    }
    drop(cluster);
    Ok(steps)
}

/// Finds the ConfigMap data value that makes the stored object exactly `size` bytes: the server
/// adds uid, creationTimestamp, namespace and generation, all of fixed width for fixed-width names.
async fn calibrate_ferry(client: &Client, size: usize) -> Result<String> {
    const PROBE: usize = 64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let create = |name: String, value: String| async move {
        loop {
            match client
                .create(
                    "ConfigMap",
                    "default",
                    &ferry_tests::configmap(&name, &value),
                )
                .await
            {
                Ok(obj) => return Ok(obj),
                // The default namespace is created by the members shortly after start.
                Err(e) if (e.is_not_found() || e.is_unavailable()) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(anyhow::anyhow!("creating a calibration ConfigMap: {e}")),
            }
        }
    };
    let probe = create(object_name(9, 999, 0), "x".repeat(PROBE)).await?;
    let overhead = stored_len(&probe)? - PROBE;
    if size <= overhead {
        bail!(
            "--size {size}: a ConfigMap with a fixed-width name already takes {overhead} bytes when stored; use a larger size"
        );
    }
    let value = "x".repeat(size - overhead);
    let check = create(object_name(9, 999, 1), value.clone()).await?;
    let got = stored_len(&check)?;
    if got != size {
        bail!("calibration failed: the stored object is {got} bytes, wanted {size}");
    }
    println!(
        "[ferry] objects: ConfigMap, stored JSON {size} bytes (data value {} bytes)",
        value.len()
    );
    Ok(value)
}

/// Length of an object as the server stores it (the returned object minus resourceVersion, which
/// the server derives from the store's revision and never stores).
fn stored_len(obj: &Value) -> Result<usize> {
    let mut obj = obj.clone();
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .context("created object has no metadata")?
        .remove("resourceVersion");
    Ok(obj.to_string().len())
}

async fn run_etcd(
    args: &StoreArgs,
    bin: &Path,
    warmup: Duration,
    measure: Duration,
) -> Result<Vec<Step>> {
    println!("\n[etcd] starting {} members", args.members);
    let mut cluster = EtcdCluster::start(bin, args.members)
        .await
        .context("starting the etcd cluster")?;
    let addrs = cluster.client_addrs();
    let leader = cluster.leader().await?;
    for (i, a) in addrs.iter().enumerate() {
        println!(
            "[etcd] member {a}{}",
            if i == leader { " (leader)" } else { "" }
        );
    }
    println!("[etcd] objects: value of {} bytes", args.size);
    let value = vec![b'x'; args.size];
    let mut steps = Vec::new();
    for (step, &clients) in args.clients.iter().enumerate() {
        let leader = cluster.leader().await?;
        let writers = (0..clients)
            .map(|i| {
                let member = match args.target {
                    Target::Leader => leader,
                    Target::Spread => i % addrs.len(),
                };
                Ok(Writer::Etcd {
                    client: EtcdClient::new(&addrs[member], cluster.tls())?,
                    value: value.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let s = run_step(writers, step, warmup, measure).await?;
        report("etcd", &s);
        steps.push(s);
    }
    drop(cluster);
    Ok(steps)
}

/// What one client task saw: latencies (ns) of writes completed in the window, errors in it.
struct TaskOutcome {
    latencies: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

/// Runs `writers.len()` clients concurrently through warm-up and the measured window.
async fn run_step(
    writers: Vec<Writer>,
    step: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Step> {
    let clients = writers.len();
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + measure;
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            tokio::spawn(async move {
                let mut out = TaskOutcome {
                    latencies: Vec::new(),
                    errors: 0,
                    first_error: None,
                };
                let mut seq = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= window_end {
                        break;
                    }
                    let name = object_name(step, i, seq);
                    seq += 1;
                    let r = w.write(&name).await;
                    let t1 = Instant::now();
                    let counted = t1 >= window_start && t1 <= window_end;
                    match r {
                        Ok(()) if counted => out.latencies.push((t1 - t0).as_nanos() as u64),
                        Ok(()) => {}
                        Err(e) => {
                            if counted {
                                out.errors += 1;
                            }
                            out.first_error.get_or_insert(e);
                            // Do not spin on a failing cluster.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in futures::future::join_all(tasks).await {
        let t = t.context("a client task failed")?;
        latencies.extend(t.latencies);
        errors += t.errors;
        if first_error.is_none() {
            first_error = t.first_error;
        }
    }
    if latencies.is_empty() {
        bail!(
            "no write succeeded with {clients} clients: {}",
            first_error.unwrap_or_else(|| "no write completed in the window".into())
        );
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        let idx = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx] as f64 / 1e6
    };
    Ok(Step {
        clients,
        writes: latencies.len(),
        errors,
        first_error,
        wps: latencies.len() as f64 / measure.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}

fn report(system: &str, s: &Step) {
    println!(
        "[{system}] {:>3} clients: {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} writes, {} errors)",
        s.clients, s.wps, s.p50_ms, s.p99_ms, s.max_ms, s.writes, s.errors
    );
    if let Some(e) = &s.first_error {
        println!("[{system}]     first error: {e}");
    }
}

fn print_table(clients: &[usize], ferry: Option<&[Step]>, etcd: Option<&[Step]>) {
    println!(
        "{:>7} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>6}",
        "clients", "ferry w/s", "p50 ms", "p99 ms", "etcd w/s", "p50 ms", "p99 ms", "ratio"
    );
    println!("{}", "-".repeat(86));
    let cell = |s: Option<&Step>| match s {
        Some(s) => format!("{:>10.0} {:>9.2} {:>9.2}", s.wps, s.p50_ms, s.p99_ms),
        None => format!("{:>10} {:>9} {:>9}", "-", "-", "-"),
    };
    for (i, c) in clients.iter().enumerate() {
        let f = ferry.and_then(|v| v.get(i));
        let e = etcd.and_then(|v| v.get(i));
        let ratio = match (f, e) {
            (Some(f), Some(e)) => format!("{:>6.2}", ratio(f, e)),
            _ => format!("{:>6}", "-"),
        };
        println!("{c:>7} | {} | {} | {ratio}", cell(f), cell(e));
    }
}

fn ratio(f: &Step, e: &Step) -> f64 {
    if e.wps > 0.0 { f.wps / e.wps } else { 0.0 }
}

/// `RESULT store c1_ratio=.. c16_ratio=.. c256_ratio=.. ferry_c1_wps=.. etcd_c1_wps=.. ...`
fn result_line(ferry: &[Step], etcd: &[Step]) -> String {
    let mut parts = vec!["RESULT store".to_string()];
    for (f, e) in ferry.iter().zip(etcd) {
        parts.push(format!("c{}_ratio={:.2}", f.clients, ratio(f, e)));
    }
    for (f, e) in ferry.iter().zip(etcd) {
        let c = f.clients;
        parts.push(format!("ferry_c{c}_wps={:.0}", f.wps));
        parts.push(format!("etcd_c{c}_wps={:.0}", e.wps));
        parts.push(format!("ferry_c{c}_p50_ms={:.2}", f.p50_ms));
        parts.push(format!("ferry_c{c}_p99_ms={:.2}", f.p99_ms));
        parts.push(format!("etcd_c{c}_p50_ms={:.2}", e.p50_ms));
        parts.push(format!("etcd_c{c}_p99_ms={:.2}", e.p99_ms));
    }
    parts.push(format!(
        "ferry_errors={}",
        ferry.iter().map(|s| s.errors).sum::<usize>()
    ));
    parts.push(format!(
        "etcd_errors={}",
        etcd.iter().map(|s| s.errors).sum::<usize>()
    ));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(clients: usize, wps: f64) -> Step {
        Step {
            clients,
            wps,
            p50_ms: 1.0,
            p99_ms: 2.5,
            ..Default::default()
        }
    }

    #[test]
    fn result_line_shape() {
        let f = [step(1, 200.0), step(16, 1000.0)];
        let e = [step(1, 100.0), step(16, 0.0)];
        assert_eq!(
            result_line(&f, &e),
            "RESULT store c1_ratio=2.00 c16_ratio=0.00 \
             ferry_c1_wps=200 etcd_c1_wps=100 ferry_c1_p50_ms=1.00 ferry_c1_p99_ms=2.50 \
             etcd_c1_p50_ms=1.00 etcd_c1_p99_ms=2.50 \
             ferry_c16_wps=1000 etcd_c16_wps=0 ferry_c16_p50_ms=1.00 ferry_c16_p99_ms=2.50 \
             etcd_c16_p50_ms=1.00 etcd_c16_p99_ms=2.50 ferry_errors=0 etcd_errors=0"
        );
    }

    #[test]
    fn names_have_fixed_width() {
        assert_eq!(
            object_name(0, 0, 0).len(),
            object_name(8, 255, 99_999_999).len()
        );
    }
}
