//! `ferry-bench`: benchmark driver. Each subcommand starts everything it measures (Ferry members,
//! and a peer such as etcd measured in the same run), prints a human-readable table and ends with
//! one `RESULT <name> key=value ...` line. Normally run through `tests/bench/run NAME`, which
//! builds the release binaries first. Method and figures: docs/benchmarks.md.

mod common;
mod datapath;
mod etcd;
mod nodeport;
mod podstart;
mod programming;
mod propagation;
mod scheduler;
mod store;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    about = "Ferry benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Store writes: Ferry's API (create) against etcd's KV Put, 3-member clusters on loopback.
    Store(store::StoreArgs),
    /// Scheduler throughput: bind a burst of pods onto 1,000 and 5,000 simulated nodes.
    Scheduler(scheduler::SchedulerArgs),
    /// Pod startup latency: create to Ready of 100 pods on 3 nodes with real agents (root).
    Podstart(podstart::PodstartArgs),
    /// Datapath programming: 10,000 services × 10 endpoints into Ferry's eBPF maps against
    /// kube-proxy's iptables rules (root).
    Programming(programming::ProgrammingArgs),
    /// Endpoint propagation: an EndpointSlice change until every node's eBPF maps hold it, on
    /// 3 nodes with real agents (root).
    Propagation(propagation::PropagationArgs),
    /// Service datapath: HTTP through a Ferry ClusterIP against the pod IP and kube-proxy's
    /// iptables and nftables layouts, at 10, 1,000 and 10,000 services (root).
    Datapath(datapath::DatapathArgs),
    /// NodePort from outside to backends on other nodes: Ferry with the XDP fast path, Ferry at
    /// TC only, kube-proxy's iptables NodePort and the pod IPs directly, on 3 nodes (root).
    Nodeport(nodeport::NodeportArgs),
}

/// The `ferry` binary the benchmark starts: `$FERRY_BIN`, else `ferry` next to this executable
/// (both are in target/release after `tests/bench/run`).
fn locate_ferry() -> Result<PathBuf> {
    let path = match std::env::var_os("FERRY_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("ferry"),
    };
    if !path.is_file() {
        bail!(
            "ferry binary not found at {}: run `tests/bench/run NAME` (it builds it) or set FERRY_BIN",
            path.display()
        );
    }
    Ok(path)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ferry = match locate_ferry() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The test harness (ferry_tests::Cluster) reads FERRY_BIN when it spawns members.
    // SAFETY: no other thread exists yet (the runtime is built below), so nothing can read the
    // environment concurrently.
    unsafe { std::env::set_var("FERRY_BIN", &ferry) };

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-bench: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Dropping the benchmark future on a signal drops the cluster guards, which kill every
        // process this run started and remove their data directories.
        tokio::select! {
            r = run(cli.bench, ferry) => r,
            s = shutdown_signal() => bail!("interrupted by {s}; stopped every process this run started"),
        }
    });
    // Client tasks still running after an error or interrupt hold no processes; do not wait.
    rt.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(bench: Bench, ferry: PathBuf) -> Result<()> {
    match bench {
        Bench::Store(args) => store::run(args, &ferry).await,
        Bench::Scheduler(args) => scheduler::run(args).await,
        Bench::Podstart(args) => podstart::run(args).await,
        Bench::Programming(args) => programming::run(args).await,
        Bench::Propagation(args) => propagation::run(args).await,
        Bench::Datapath(args) => datapath::run(args).await,
        Bench::Nodeport(args) => nodeport::run(args).await,
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the benchmark still runs; Ctrl-C then kills it outright and the
        // children (same process group) get the SIGINT too.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
