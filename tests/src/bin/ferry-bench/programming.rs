//! The `programming` benchmark: how long it takes to program N services with M endpoints each
//! into the datapath, Ferry's eBPF maps against kube-proxy's iptables rules.
//!
//! Ferry: the agent's own map writer (`ferry_agent::datapath::socklb::SockLb::sync`, what the
//! agent runs after every Service/EndpointSlice change) writes the N frontends and N×M backend
//! slots into freshly created maps (pinned under a scratch directory, programs attached to an
//! empty scratch cgroup, so nothing on the machine is affected). The figure is the first full
//! sync; a second sync of the same state (nothing to write) and one endpoint changed in every
//! service are reported too.
//!
//! iptables: the same services as kube-proxy's iptables mode lays them out (DATAPATH-NOTES §5:
//! KUBE-SERVICES → KUBE-SVC-* with `statistic` probabilities → KUBE-SEP-* DNAT, masquerade
//! marks, N·(5+3M)+5 nat rules), loaded with one `iptables-restore --noflush` into a scratch
//! network namespace, as kube-proxy's full sync does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_agent::datapath::{
    services::{BackendAddr, Entry, Frontend},
    socklb::SockLb,
};

use crate::common::met;

/// The goal: 10,000 services programmed in at most 1 s.
const GOAL_SECONDS: f64 = 1.0;

#[derive(Args, Debug)]
pub struct ProgrammingArgs {
    /// Services.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 10 + i as u32)
}

fn endpoint(i: usize, k: usize, shift: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 2 + (i * 16 + k + shift) as u32)
}

fn desired(n: usize, m: usize, shift: usize) -> BTreeMap<Frontend, Entry> {
    (0..n)
        .map(|i| {
            let f = Frontend::internal(vip(i), 80, 6);
            let e = Entry {
                service: format!("bench/svc-{i}:http"),
                ready: (0..m)
                    .map(|k| BackendAddr {
                        addr: endpoint(i, k, if k == 0 { shift } else { 0 }),
                        port: 8080,
                        proto: 6,
                    })
                    .collect(),
                terminating: vec![],
                affinity_s: None,
                maglev: false,
            };
            (f, e)
        })
        .collect()
}

/// kube-proxy's iptables-restore input (nat table) for `n` services: service `i` at
/// `vip(i)`:80/TCP, named `bench/svc-<i>:http`, with endpoints `endpoints(i)` on port
/// `target_port`. With `portals`, PREROUTING and OUTPUT jump to KUBE-SERVICES as kube-proxy
/// has them; without, the caller adds the jump (the `datapath` benchmark switches it on only
/// while iptables is measured).
pub(crate) fn iptables_rules(
    n: usize,
    vip: impl Fn(usize) -> Ipv4Addr,
    endpoints: impl Fn(usize) -> Vec<Ipv4Addr>,
    target_port: u16,
    portals: bool,
) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    chains.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    if portals {
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        rules.push_str(
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
    }
    rules.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    rules.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for i in 0..n {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let v = vip(i);
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {v}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s 10.244.0.0/16 -d {v}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ"
        );
        let eps = endpoints(i);
        let m = eps.len();
        for (k, e) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:012X}{k:04X}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if k + 1 < m {
                let p = 1.0 / (m - k) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} -s {e}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {e}:{target_port}"
            );
        }
    }
    rules.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    chains + &rules + "COMMIT\n"
}

/// Runs `iptables-restore --noflush` with `input` in a scratch network namespace; its time.
fn time_iptables_restore(input: &str) -> Result<Duration> {
    let ns = format!("ferry-bench-ipt-{}", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &ns]).status()?;
    if !add.success() {
        bail!("ip netns add {ns} failed");
    }
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _guard = Drop_(ns.clone());
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (apt-get install iptables)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn scratch_cgroup() -> Result<std::path::PathBuf> {
    let root = ferry_agent::datapath::socklb::cgroup2_root().context("no cgroup2 mount")?;
    let dir = root.join(format!("ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub async fn run(args: ProgrammingArgs) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the programming benchmark needs root (BPF maps, network namespaces)");
    }
    let (n, m) = (args.services, args.endpoints);
    println!("programming {n} services × {m} endpoints");
    let pin_dir = Path::new("/sys/fs/bpf/ferry").join(format!("bench-{}", std::process::id()));
    let cgroup = scratch_cgroup()?;
    let result = (|| -> Result<(Duration, Duration, Duration, usize)> {
        let mut lb = SockLb::load(&pin_dir, &cgroup, None)?;
        let want = desired(n, m, 0);
        let started = Instant::now();
        let report = lb.sync(&want)?;
        let first = started.elapsed();
        let started = Instant::now();
        lb.sync(&want)?;
        let noop = started.elapsed();
        let changed = desired(n, m, 1);
        let started = Instant::now();
        lb.sync(&changed)?;
        let one_each = started.elapsed();
        Ok((first, noop, one_each, report.writes))
    })();
    let _ = ferry_agent::datapath::socklb::remove(&pin_dir);
    let _ = std::fs::remove_dir(&cgroup);
    let (first, noop, one_each, writes) = result?;
    let rules = iptables_rules(
        n,
        vip,
        |i| (0..m).map(|k| endpoint(i, k, 0)).collect(),
        8080,
        true,
    );
    let rule_count = rules.lines().filter(|l| l.starts_with("-A ")).count();
    let ipt = time_iptables_restore(&rules)?;
    println!();
    println!("| what | time | writes |");
    println!("|---|---:|---:|");
    println!(
        "| Ferry: program {n} services (empty maps) | {:.3} s | {writes} map entries |",
        first.as_secs_f64()
    );
    println!(
        "| Ferry: the same state again (nothing to write) | {:.3} s | 0 |",
        noop.as_secs_f64()
    );
    println!(
        "| Ferry: one endpoint changed in every service | {:.3} s | |",
        one_each.as_secs_f64()
    );
    println!(
        "| iptables-restore --noflush, kube-proxy layout | {:.3} s | {rule_count} rules |",
        ipt.as_secs_f64()
    );
    println!(
        "\nFerry/iptables time ratio {:.3} (goal: Ferry ≤ {GOAL_SECONDS} s: {})",
        first.as_secs_f64() / ipt.as_secs_f64(),
        met(first.as_secs_f64() <= GOAL_SECONDS)
    );
    println!(
        "RESULT programming services={n} endpoints={m} seconds={:.3} iptables_seconds={:.3}",
        first.as_secs_f64(),
        ipt.as_secs_f64()
    );
    Ok(())
}
