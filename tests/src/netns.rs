//! Several nodes on one machine: network namespaces on a shared L2 fabric, each node running a
//! real `ferry agent` process.
//!
//! ```text
//!   host namespace ── <p>h ═══ <p>hf ─┐
//!   (control-plane members            │   fabric namespace <p>-fabric: bridge <p>br
//!    listen on the host address)      ├── <p>n0f ═══ eth0  node namespace <p>-node0 (agent)
//!                                     ├── <p>n1f ═══ eth0  node namespace <p>-node1 (agent)
//!                                     ├── ...
//!                                     └── <p>cf  ═══ eth0  client namespace <p>-client
//! ```
//!
//! All on one /24 ([`Fabric::subnet`]): the host is `.1`, node `i` is `.(10 + i)`, the client
//! `.250`. The subnet is `172.30.X.0/24` with X picked at random among those no route of the
//! host overlaps. Every node namespace has `net.ipv4.ip_forward=1`.
//!
//! Names: `<p>` is `fmn` + this process's pid in 6 hex digits + one character per harness of
//! the process, so every run has its own names, the longest interface name (`<p>n99f`) has 14
//! bytes, and the owning process of any leftover can be told from its name. Node `i` is the
//! Node `<p>-node<i>` (also its namespace's name), so what its agent keys by node name (the
//! cgroup parent `ferry/<node>`) is the run's too.
//!
//! Teardown ([`Fabric::teardown`], also run when the [`Fabric`] is dropped, e.g. when a test
//! panics): agents are killed by PID; then `ferry agent --cleanup` runs in every node's
//! namespace (as the agent did) and removes what the agents made: containers (runc state in
//! the agent's data directory) and their cgroups, overlay and tmpfs mounts under the data
//! directory, pod namespaces `/run/netns/ferry-<pod uid>`, veths and the bridge; then the
//! host's veth and every namespace with the prefix are deleted, and what is left is checked
//! (namespaces, links, mounts under the run's directory, pod namespaces, cgroups, processes).
//! [`Fabric::new`] first sweeps what dead runs left behind (names of the `fmn` family whose
//! process is gone): the same cleanup in their node namespaces where these still exist, then
//! processes still running in their namespaces or cgroups, their pod namespaces, mounts and
//! temporary directories (`$TMPDIR/<p>-*`, agent data and logs).
//!
//! Agents are entered with `nsenter --net=/run/netns/NAME` and exec'd (same PID), never with
//! `ip netns exec`, which remounts /sys and hides /sys/fs/bpf and the cgroup hierarchy. They
//! get `PR_SET_PDEATHSIG` = SIGKILL, so they also die if the test process is killed; note the
//! signal follows the *thread* that spawned them, so start them from the test's own thread (a
//! `#[tokio::test]` body is), not from a blocking-pool thread.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use serde_json::Value;

use crate::{Cluster, ferry_bin};

/// Every harness name starts with this.
pub const PREFIX_FAMILY: &str = "fmn";
const NETNS_DIR: &str = "/run/netns";
const HOST_OCTET: u8 = 1;
const FIRST_NODE_OCTET: u8 = 10;
const CLIENT_OCTET: u8 = 250;
/// Interface name inside node and client namespaces.
pub const NODE_IFNAME: &str = "eth0";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether the harness can run here (root, `ip` and `nsenter` present). Tests skip with a
/// message when not.
pub fn available() -> std::result::Result<(), String> {
    // The effective uid, second field of `Uid:` (nix's Uid needs a feature this crate lacks).
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return Err("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nsenter"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!("needs `{tool}` on PATH"));
        }
    }
    Ok(())
}

/// Runs a command and fails with its output when it does not succeed.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The creating process of a harness name, if it is one.
fn owner_pid(name: &str) -> Option<i32> {
    let hex = name.strip_prefix(PREFIX_FAMILY)?.get(..6)?;
    i32::from_str_radix(hex, 16).ok()
}

fn host_links() -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn namespaces() -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What is left of the run with name prefix `prefix`: namespaces (in /run/netns) and host
/// links whose name starts with it, mounts under its temporary directories
/// (`$TMPDIR/<prefix>-*`), cgroups of its nodes (`ferry/<prefix>-*` in every hierarchy), and
/// processes in those cgroups or running from its directories (containers, their runc
/// monitors). Pod namespaces (`/run/netns/ferry-<uid>`) carry no prefix: [`Fabric::teardown`]
/// checks those of the pods it saw.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    v.extend(
        host_links()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("link {n}")),
    );
    v.extend(
        mounts_of_run(prefix)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    v.extend(
        node_cgroups(prefix)
            .into_iter()
            .map(|c| format!("cgroup {}", c.display())),
    );
    v.extend(
        processes_of_run(prefix)
            .into_iter()
            .map(|(pid, cmd)| format!("process {pid} ({cmd})")),
    );
    v
}

/// Mount points of the current mount namespace (`/proc/self/mountinfo`, octal escapes
/// decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && let Ok(n) = u8::from_str_radix(&String::from_utf8_lossy(digits), 8)
        {
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The run's temporary directories: `$TMPDIR/<prefix>-*`.
fn run_dirs(prefix: &str) -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .map(|e| e.path())
        .collect()
}

/// Mounts under the run's temporary directories, deepest first.
fn mounts_of_run(prefix: &str) -> Vec<PathBuf> {
    let dirs = run_dirs(prefix);
    let mut v: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// The `ferry/<prefix>-*` cgroup directories of the run's nodes, in every mounted hierarchy
/// (`/sys/fs/cgroup/<hierarchy>/ferry/...`, or `/sys/fs/cgroup/ferry/...` on a pure v2 host).
fn node_cgroups(prefix: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join("ferry")];
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        parents.push(e.path().join("ferry"));
    }
    let mut v = Vec::new();
    for parent in parents {
        for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                v.push(e.path());
            }
        }
    }
    v
}

/// Live (not zombie) processes in a cgroup of the run's nodes, or whose command line names
/// one of the run's directories (runc and its monitor shells): (pid, command line).
fn processes_of_run(prefix: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let cgroup_mark = format!(":/ferry/{prefix}-");
    let dir_mark = format!("/{prefix}-");
    let mut v = Vec::new();
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            continue;
        }
        let cgroups = fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
        let cmdline = fs::read(p.path().join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        if cgroups.contains(&cgroup_mark) || cmdline.contains(&dir_mark) {
            let short: String = cmdline.chars().take(120).collect();
            v.push((pid, short));
        }
    }
    v
}

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Pod uids the agent with data directory `data_dir` knows: its pod directories and its
/// address allocations.
fn pod_uids(data_dir: &Path) -> Vec<String> {
    let mut uids: Vec<String> = fs::read_dir(data_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ipam = fs::read(data_dir.join("network/ipam.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    for a in ipam
        .as_ref()
        .and_then(|v| v["allocations"].as_array())
        .into_iter()
        .flatten()
    {
        if let Some(u) = a.pointer("/pod/uid").and_then(Value::as_str) {
            uids.push(u.to_owned());
        }
    }
    uids.sort();
    uids.dedup();
    uids
}

/// How long teardown waits for container starts a killed agent left in flight.
const START_SETTLE: Duration = Duration::from_secs(15);

/// Waits (until `deadline`) for the container starts in flight under agent data directory
/// `data_dir` to settle: every container bundle (`runtime/containers/<id>/`) has runc's `pid`
/// file or its monitor's `exit` file. A killed agent leaves its detached runc monitors running;
/// `ferry agent --cleanup` skips a container runc does not know yet, and a `runc run` still in
/// flight then creates it after the cleanup (see docs/testing.md). Returns the bundles that
/// did not settle.
fn wait_starts_settled(data_dir: &Path, deadline: Instant) -> Vec<PathBuf> {
    let bundles = data_dir.join("runtime/containers");
    loop {
        let pending: Vec<PathBuf> = fs::read_dir(&bundles)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|b| b.is_dir() && !b.join("pid").exists() && !b.join("exit").exists())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            return pending;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The name in /run/netns of pod `uid`'s network namespace (as the agent names it).
pub fn pod_netns(uid: &str) -> String {
    format!("ferry-{uid}")
}

/// `ferry agent --cleanup` for node `node` (data directory `data_dir`, pod bridge `bridge`),
/// run in the node's namespace `netns` as the agent was, its output appended to `log`.
fn spawn_cleanup(
    netns: &Path,
    node: &str,
    data_dir: &Path,
    bridge: Option<&OsString>,
    log: &Path,
) -> Result<Child> {
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(ferry_bin())
        .args(["agent", "--cleanup", "--node-name", node, "--data-dir"])
        .arg(data_dir);
    if let Some(b) = bridge {
        cmd.arg("--pod-bridge").arg(b);
    }
    cmd.env("FERRY_LOG", "info")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn()
        .with_context(|| format!("starting ferry agent --cleanup for {node}"))
}

/// How long `ferry agent --cleanup` may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for cleanup processes (each with its node name and log file) up to `timeout`;
/// returns one line per failure, with the end of its log (SIGKILLed when late).
fn wait_cleanups(children: Vec<(String, Child, PathBuf)>, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut failures = Vec::new();
    for (what, mut c, log) in children {
        let tail = || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        };
        loop {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => break,
                Ok(Some(st)) => {
                    failures.push(format!("ferry agent --cleanup of {what}: {st}\n{}", tail()));
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    failures.push(format!(
                        "ferry agent --cleanup of {what}: still running after {timeout:?}, killed"
                    ));
                    break;
                }
                Err(e) => {
                    failures.push(format!("ferry agent --cleanup of {what}: {e}"));
                    break;
                }
            }
        }
    }
    failures
}

/// Last resort after a cleanup that did not finish the job, for a run with name prefix
/// `prefix`: kills the processes of its cgroups and directories, deletes the pod namespaces of
/// `uids`, lazily unmounts what is mounted under its directories (so removing them never
/// walks into a mount), and removes its empty cgroups.
fn force_remove(prefix: &str, uids: &[String]) {
    for (pid, _) in processes_of_run(prefix) {
        sigkill(pid);
    }
    for uid in uids {
        let ns = pod_netns(uid);
        if netns_path(&ns).exists() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    for m in mounts_of_run(prefix) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    // Children before parents: longest paths first.
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for top in node_cgroups(prefix) {
        collect_dirs(&top, &mut cgroups);
    }
    cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for _ in 0..50 {
        cgroups.retain(|c| fs::remove_dir(c).is_err() && c.exists());
        if cgroups.is_empty() {
            break;
        }
        // Killed processes take a moment to leave their cgroup.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// SIGKILLs every process whose network namespace is the one bound at `path`. Only used on
/// namespaces of this harness family (agents of a run that died before its teardown).
fn kill_processes_in(path: &Path) {
    kill_processes_in_where(path, |_| true);
}

/// Like [`kill_processes_in`], for the processes whose command line satisfies `doomed`.
fn kill_processes_in_where(path: &Path, doomed: impl Fn(&str) -> bool) {
    let Ok(target) = fs::metadata(path) else {
        return;
    };
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(m) = fs::metadata(p.path().join("ns/net"))
            && m.dev() == target.dev()
            && m.ino() == target.ino()
        {
            let cmdline = fs::read(p.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            if doomed(&cmdline) {
                sigkill(pid);
            }
        }
    }
}

/// Removes namespaces and host links of this harness family whose name satisfies `doomed`:
/// processes inside the namespaces are killed first, host links are deleted before the
/// namespaces (deleting a veth end takes the peer with it at once, whereas a namespace's links
/// go with the namespace asynchronously).
fn remove_where(doomed: impl Fn(&str) -> bool) {
    for link in host_links() {
        if link.starts_with(PREFIX_FAMILY) && doomed(&link) {
            let _ = ip(&["link", "del", &link]);
        }
    }
    for ns in namespaces() {
        if ns.starts_with(PREFIX_FAMILY) && doomed(&ns) {
            kill_processes_in(&netns_path(&ns));
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// Length of a run's name prefix: the family, 6 hex digits of pid, one sequence character.
const PREFIX_LEN: usize = PREFIX_FAMILY.len() + 7;

/// Removes what runs of this harness family left behind when their process is gone: see
/// [`sweep_run`].
pub fn sweep_stale() {
    let me = std::process::id() as i32;
    let dead = move |name: &str| {
        owner_pid(name).is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let tmp_names = fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let cgroup_names = node_cgroups(PREFIX_FAMILY)
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let prefixes: BTreeSet<String> = namespaces()
        .into_iter()
        .chain(host_links())
        .chain(tmp_names)
        .chain(cgroup_names)
        .filter(|n| n.starts_with(PREFIX_FAMILY) && dead(n))
        .filter_map(|n| n.get(..PREFIX_LEN).map(str::to_owned))
        .collect();
    for prefix in prefixes {
        sweep_run(&prefix);
    }
}

/// Removes what the dead run `prefix` left: for every agent data directory
/// (`$TMPDIR/<prefix>-*/node-<i>`) whose node namespace still exists, kills the agent if it
/// lives, and runs `ferry agent --cleanup` in that namespace (containers, their cgroups, pod
/// namespaces, mounts; the containers' runc monitors are left to see their containers die);
/// then deletes the run's namespaces and links (processes in them first), and whatever the
/// cleanup could not reach (see [`force_remove`]); last the run's directories.
fn sweep_run(prefix: &str) {
    let dirs = run_dirs(prefix);
    let mut uids = Vec::new();
    let mut cleanups = Vec::new();
    for d in &dirs {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(i) = name
                .strip_prefix("node-")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if !e.path().is_dir() {
                continue;
            }
            uids.extend(pod_uids(&e.path()));
            let node = format!("{prefix}-node{i}");
            let ns = netns_path(&node);
            if !ns.exists() {
                continue;
            }
            // Not the containers' runc monitors (`runc run` and its shell).
            kill_processes_in_where(&ns, |cmd| !cmd.contains("runc"));
            wait_starts_settled(&e.path(), Instant::now() + START_SETTLE);
            let log = d.join(format!("node-{i}.log"));
            match spawn_cleanup(&ns, &node, &e.path(), None, &log) {
                Ok(c) => cleanups.push((node, c, log)),
                Err(e) => eprintln!("sweeping {prefix}: {e:#}"),
            }
        }
    }
    for f in wait_cleanups(cleanups, CLEANUP_TIMEOUT) {
        eprintln!("sweeping {prefix}: {f}");
    }
    remove_where(|name| name.starts_with(prefix));
    force_remove(prefix, &uids);
    if mounts_of_run(prefix).is_empty() {
        for d in dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// A fresh /24 in 172.30.0.0/16 that no route of the host overlaps.
fn pick_subnet() -> Result<Ipv4Addr> {
    let routes = ip(&["-4", "-o", "route", "show", "table", "all"])?;
    let mut taken: Vec<(u32, u8)> = Vec::new();
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut dst = words.next().unwrap_or("");
        if matches!(
            dst,
            "local"
                | "broadcast"
                | "unicast"
                | "unreachable"
                | "blackhole"
                | "prohibit"
                | "throw"
                | "multicast"
                | "anycast"
                | "nat"
        ) {
            dst = words.next().unwrap_or("");
        }
        if dst == "default" {
            continue;
        }
        let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
        if let (Ok(a), Ok(l)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>())
            && l > 0
        {
            taken.push((u32::from(a), l));
        }
    }
    let mask = |l: u8| {
        if l == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(l))
        }
    };
    let overlaps = |net: u32| {
        taken.iter().any(|&(a, l)| {
            let m = mask(l.min(24));
            a & m == net & m
        })
    };
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for i in 0..256u32 {
        let x = ((seed.wrapping_add(i.wrapping_mul(97))) % 256) as u8;
        let net = Ipv4Addr::new(172, 30, x, 0);
        if !overlaps(u32::from(net)) {
            return Ok(net);
        }
    }
    bail!("every 172.30.X.0/24 overlaps a route of this host")
}

/// One `ferry agent` process in a node namespace.
struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
    /// Everything after `ferry`: restarts reuse it.
    args: Vec<OsString>,
}

impl AgentProcess {
    /// The agent's `--pod-bridge`, if it was given one.
    fn pod_bridge(&self) -> Option<&OsString> {
        let flag = |a: &OsString| a == "--pod-bridge";
        self.args
            .iter()
            .position(flag)
            .and_then(|i| self.args.get(i + 1))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Attaches a program that passes every frame (`r0 = XDP_PASS; exit`) to interface `ifname`
/// of network namespace `netns`, in driver mode, through a BPF link held by the returned fd.
/// Raw bpf(2) calls: two instructions need no object file or loader.
fn xdp_pass(netns: &Path, ifname: &str) -> Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 4;
    // mov64 r0, 2 (XDP_PASS); exit.
    let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x95];
    let license = c"GPL";
    // bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, ... expected_attach_type
    // at offset 68.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
    // SAFETY: a valid bpf_attr of the size given, pointing at live memory.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if prog < 0 {
        bail!("loading XDP_PASS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd this process owns.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(prog as i32) };
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let ifname = std::ffi::CString::new(ifname)?;
    // The interface index is looked up, and the link made, in the namespace: in a thread of
    // its own, which setns(2) moves there and which then ends.
    let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog);
    let link = std::thread::spawn(move || -> Result<i64> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname:?}");
        }
        // bpf_attr for BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type, flags.
        let mut attr = [0u8; 64];
        attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
        attr[12..16].copy_from_slice(&XDP_FLAGS_DRV_MODE.to_ne_bytes());
        // SAFETY: a valid bpf_attr of the size given.
        let link = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                attr.as_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if link < 0 {
            bail!("linking XDP_PASS: {}", std::io::Error::last_os_error());
        }
        Ok(link)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the setns thread panicked"))??;
    // SAFETY: a new fd this process owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(link as i32) })
}

/// A simulated node: a namespace on the fabric, and its agent once started.
pub struct SimNode {
    /// The Node's name in the cluster, `<prefix>-node<i>`: the same as its namespace's.
    pub name: String,
    /// The namespace (a file in /run/netns).
    pub netns: String,
    /// Its fabric address (the agent's `--node-ip`).
    pub ip: Ipv4Addr,
    agent: Option<AgentProcess>,
}

impl SimNode {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// The harness: see the module docs. Dropping it tears everything down.
pub struct Fabric {
    prefix: String,
    subnet: Ipv4Addr,
    fabric_ns: String,
    host_link: String,
    client_ns: String,
    nodes: Vec<SimNode>,
    /// `FERRY_LOG` of agents started from now on.
    agent_log_level: String,
    torn_down: bool,
    dir: tempfile::TempDir,
    /// XDP_PASS links on the fabric ends of the nodes' links (see `add_leaf`); they go with
    /// the fabric namespace, or with this process.
    xdp_links: Vec<std::os::fd::OwnedFd>,
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!(
                "harness {}: left after teardown (then removed by force): {left:#?}",
                self.prefix
            );
        }
    }
}

impl Fabric {
    /// Builds the fabric with `nodes` node namespaces (no agents yet), after sweeping what
    /// dead runs left behind.
    pub fn new(nodes: usize) -> Result<Fabric> {
        if nodes > 99 {
            bail!("at most 99 nodes (interface names have 15 bytes)");
        }
        sweep_stale();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 36;
        let seq = char::from_digit(seq, 36).unwrap_or('0');
        let prefix = format!("{PREFIX_FAMILY}{:06x}{seq}", std::process::id());
        let subnet = pick_subnet()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()?;
        let mut f = Fabric {
            fabric_ns: format!("{prefix}-fabric"),
            host_link: format!("{prefix}h"),
            client_ns: format!("{prefix}-client"),
            prefix,
            subnet,
            nodes: Vec::new(),
            agent_log_level: "info".into(),
            torn_down: false,
            xdp_links: Vec::new(),
            dir,
        };
        // From here on a failure drops `f`, which removes whatever was made.
        f.build(nodes)?;
        Ok(f)
    }

    /// Tears the run down (what dropping the `Fabric` does, see the module docs) and returns
    /// what was left after it, in words (empty when everything went): the run's namespaces
    /// and links, mounts under its directory, pod namespaces of the pods its agents had,
    /// cgroups of its nodes, processes of its containers, and failures of
    /// `ferry agent --cleanup`. Whatever was left is then removed by force, so the next run
    /// starts clean either way. Only the first call does anything.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        self.xdp_links.clear();
        for n in &mut self.nodes {
            if let Some(a) = &mut n.agent {
                a.kill9();
            }
        }
        let mut problems = Vec::new();
        let mut uids = Vec::new();
        let mut cleanups = Vec::new();
        let settle = Instant::now() + START_SETTLE;
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(agent) = &n.agent else { continue };
            let dir = self.agent_data_dir(i);
            uids.extend(pod_uids(&dir));
            for b in wait_starts_settled(&dir, settle) {
                problems.push(format!(
                    "container start in flight after {START_SETTLE:?}: {}",
                    b.display()
                ));
            }
            match spawn_cleanup(
                &n.netns_path(),
                &n.name,
                &dir,
                agent.pod_bridge(),
                &agent.log,
            ) {
                Ok(c) => cleanups.push((n.name.clone(), c, agent.log.clone())),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        problems.extend(wait_cleanups(cleanups, CLEANUP_TIMEOUT));
        // Monitors whose containers were just killed exit a moment later.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !processes_of_run(&self.prefix).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut left: BTreeSet<String> = processes_of_run(&self.prefix)
            .into_iter()
            .map(|(pid, cmd)| format!("process {pid} ({cmd})"))
            .collect();
        let prefix = self.prefix.clone();
        remove_where(|name| name.starts_with(&prefix));
        left.extend(leftovers(&self.prefix));
        for uid in &uids {
            let ns = pod_netns(uid);
            if netns_path(&ns).exists() {
                left.insert(format!("pod netns {}", netns_path(&ns).display()));
            }
        }
        problems.extend(left);
        if !problems.is_empty() {
            force_remove(&self.prefix, &uids);
        }
        problems
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, last)
    }

    fn build(&mut self, nodes: usize) -> Result<()> {
        let p = self.prefix.clone();
        let fab = self.fabric_ns.clone();
        let br = format!("{p}br");
        ip(&["netns", "add", &fab])?;
        ip(&["-n", &fab, "link", "set", "lo", "up"])?;
        ip(&["-n", &fab, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &fab, "link", "set", &br, "up"])?;

        // The host's leg, for the control-plane members.
        let hf = format!("{p}hf");
        let host_cidr = format!("{}/24", self.host_ip());
        ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &hf,
            "netns",
            &fab,
        ])?;
        ip(&["-n", &fab, "link", "set", &hf, "master", &br, "up"])?;
        ip(&["addr", "add", &host_cidr, "dev", &self.host_link])?;
        ip(&["link", "set", &self.host_link, "up"])?;

        let client_ns = self.client_ns.clone();
        self.add_leaf(&client_ns, &format!("{p}cf"), self.client_ip(), false)?;
        for i in 0..nodes {
            let netns = format!("{p}-node{i}");
            let node_ip = self.addr(FIRST_NODE_OCTET + i as u8);
            self.add_leaf(&netns, &format!("{p}n{i}f"), node_ip, true)?;
            self.nodes.push(SimNode {
                name: netns.clone(),
                netns,
                ip: node_ip,
                agent: None,
            });
        }
        Ok(())
    }

    /// A namespace with `eth0` on the fabric bridge holding `addr/24`.
    fn add_leaf(
        &mut self,
        netns: &str,
        fabric_end: &str,
        addr: Ipv4Addr,
        forward: bool,
    ) -> Result<()> {
        let fab = &self.fabric_ns;
        let br = format!("{}br", self.prefix);
        ip(&["netns", "add", netns])?;
        ip(&[
            "-n",
            fab,
            "link",
            "add",
            fabric_end,
            "type",
            "veth",
            "peer",
            "name",
            NODE_IFNAME,
            "netns",
            netns,
        ])?;
        ip(&["-n", fab, "link", "set", fabric_end, "master", &br, "up"])?;
        if forward {
            // The fabric behaves like a wire in front of a node: frames reach the node with
            // complete checksums (a veth would hand over the sender's partial ones, which no
            // NIC delivers and which an XDP program cannot tell apart), and the fabric end
            // takes the frames a node's XDP program sends back out (a veth delivers XDP_TX
            // frames only to a peer that runs XDP itself).
            run(Command::new("nsenter")
                .arg(format!("--net={}", netns_path(fab).display()))
                .args(["ethtool", "-K", fabric_end, "tx", "off"]))?;
            let link = xdp_pass(&netns_path(fab), fabric_end)
                .with_context(|| format!("attaching XDP_PASS to {fabric_end}"))?;
            self.xdp_links.push(link);
        }
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            NODE_IFNAME,
        ])?;
        ip(&["-n", netns, "link", "set", NODE_IFNAME, "up"])?;
        if forward {
            run(Command::new("nsenter")
                .arg(format!("--net={}", netns_path(netns).display()))
                .args(["/bin/busybox", "sysctl", "-w", "net.ipv4.ip_forward=1"]))?;
        }
        Ok(())
    }

    /// This run's name prefix: every namespace and host link of the run starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The fabric's network address (a /24).
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// The host's address on the fabric: where control-plane members should listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.addr(HOST_OCTET)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        self.addr(CLIENT_OCTET)
    }

    pub fn client_netns(&self) -> &str {
        &self.client_ns
    }

    pub fn fabric_netns(&self) -> &str {
        &self.fabric_ns
    }

    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// The run's temporary directory (`$TMPDIR/<prefix>-*`): agent data and logs; removed at
    /// teardown.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where node `i`'s agent keeps its state (kept across restarts).
    pub fn agent_data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    /// `FERRY_LOG` for agents started (or restarted) from now on; `info` by default.
    pub fn set_agent_log_level(&mut self, level: &str) {
        self.agent_log_level = level.to_owned();
    }

    /// Imports an OCI image archive into node `i`'s agent data directory with
    /// `ferry image import` (before the agent starts or while it runs: it picks images up).
    pub fn import_image(&self, i: usize, archive: &Path) -> Result<()> {
        let dir = self.agent_data_dir(i);
        fs::create_dir_all(&dir)?;
        run(Command::new(ferry_bin())
            .args(["image", "import"])
            .arg(archive)
            .arg("--data-dir")
            .arg(&dir))?;
        Ok(())
    }

    /// The log file of attempt `attempt` of container `container` of pod `uid` on node `i`.
    pub fn container_log(&self, i: usize, uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.agent_data_dir(i)
            .join("pods")
            .join(uid)
            .join("logs")
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The PID of the process of container `id` (the container ID in a pod's status, without
    /// `runc://`) on node `i`, as runc recorded it when it started.
    pub fn container_pid(&self, i: usize, id: &str) -> Option<u32> {
        let id = id.strip_prefix("runc://").unwrap_or(id);
        let path = self
            .agent_data_dir(i)
            .join("runtime/containers")
            .join(id)
            .join("pid");
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}.log"))
    }

    /// Starts an agent on every node (see [`Fabric::start_agent`]).
    pub fn start_agents(&mut self, cluster: &Cluster, extra: &[&str]) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_agent(i, cluster, extra)?;
        }
        Ok(())
    }

    /// Starts `ferry agent` in node `i`'s namespace: `--node-name <prefix>-node<i> --node-ip <its
    /// fabric address>`, the cluster's members as servers, the cluster's join token, its own
    /// data directory, plus `extra` flags (e.g. `--tunnel vxlan`).
    pub fn start_agent(&mut self, i: usize, cluster: &Cluster, extra: &[&str]) -> Result<()> {
        if self.nodes[i]
            .agent
            .as_ref()
            .is_some_and(|a| a.child.is_some())
        {
            bail!("node {i}'s agent is already running");
        }
        let data_dir = self.agent_data_dir(i);
        fs::create_dir_all(&data_dir)?;
        let node = &self.nodes[i];
        let mut args: Vec<OsString> = vec![
            "agent".into(),
            "--server".into(),
            cluster.addrs().into(),
            "--node-name".into(),
            node.name.clone().into(),
            "--node-ip".into(),
            node.ip.to_string().into(),
            "--data-dir".into(),
            data_dir.into(),
            "--token".into(),
            cluster.token.clone().into(),
            // All nodes share one kernel: each node's socket load balancing covers its own
            // cgroup subtree (its pods), never the client namespace's processes.
            "--cgroup-root".into(),
            format!("/ferry/{}", node.name).into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let mut agent = AgentProcess {
            child: None,
            log: self.agent_log(i),
            args,
        };
        self.spawn_agent(i, &mut agent)?;
        self.nodes[i].agent = Some(agent);
        Ok(())
    }

    fn spawn_agent(&self, i: usize, agent: &mut AgentProcess) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&agent.log)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.nodes[i].netns_path().display()))
            .arg("--")
            .arg(ferry_bin())
            .args(&agent.args)
            .env("FERRY_LOG", &self.agent_log_level)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        agent.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting the agent of node {i}"))?,
        );
        Ok(())
    }

    /// The PID of node `i`'s agent (nsenter exec's the agent, so it is the agent's own).
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i]
            .agent
            .as_ref()
            .and_then(|a| a.child.as_ref())
            .map(Child::id)
    }

    /// SIGKILLs node `i`'s agent by its PID and reaps it; its data directory stays.
    pub fn kill9_agent(&mut self, i: usize) {
        if let Some(a) = &mut self.nodes[i].agent {
            a.kill9();
        }
    }

    /// Starts node `i`'s agent again with the same flags and data directory.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let mut agent = self.nodes[i]
            .agent
            .take()
            .context("node's agent was never started")?;
        agent.kill9();
        let result = self.spawn_agent(i, &mut agent);
        self.nodes[i].agent = Some(agent);
        result
    }

    /// Whether node `i`'s agent is still running (not exited).
    pub fn agent_running(&mut self, i: usize) -> bool {
        match self.nodes[i].agent.as_mut().and_then(|a| a.child.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `lines` lines of node `i`'s agent log (all its runs), for failure messages.
    pub fn agent_log_tail(&self, i: usize, lines: usize) -> String {
        let text = fs::read_to_string(self.agent_log(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every agent's log tail, headed by the node name.
    pub fn agent_logs(&self, lines: usize) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- {} agent log\n{}",
                    self.nodes[i].name,
                    self.agent_log_tail(i, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `argv` in namespace `netns` (entered with nsenter; the test's own mount namespace,
    /// so /sys stays as it is). Does not check the exit status.
    pub fn exec_in(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().context("empty command")?;
        Command::new("nsenter")
            .arg(format!("--net={}", netns_path(netns).display()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in {netns}"))
    }

    /// Runs `argv` in node `i`'s namespace.
    pub fn node_exec(&self, i: usize, argv: &[&str]) -> Result<Output> {
        self.exec_in(&self.nodes[i].netns, argv)
    }

    /// Runs `argv` in node `i`'s namespace and returns its stdout; fails on a non-zero exit.
    pub fn node_check(&self, i: usize, argv: &[&str]) -> Result<String> {
        let out = self.node_exec(i, argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {} failed ({}): {}",
                self.nodes[i].name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ferry datapath <what> --node-name <node i>` run in node `i`: its output.
    pub fn datapath(&self, i: usize, what: &str) -> Result<String> {
        self.node_check(
            i,
            &[
                ferry_bin().to_str().context("ferry path")?,
                "datapath",
                what,
                "--node-name",
                &self.nodes[i].name,
            ],
        )
    }

    /// Node `i`'s datapath counter `name` (e.g. `ns_xdp_tx`), as `ferry datapath services`
    /// prints it on its `counters:` line.
    pub fn datapath_counter(&self, i: usize, name: &str) -> Result<u64> {
        let out = self.datapath(i, "services")?;
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("counters: "))
            .with_context(|| format!("no counters in:\n{out}"))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("no counter {name} in {line:?}"))?
            .parse()
            .context("counter value")
    }

    /// Runs `argv` in the external client's namespace.
    pub fn client_exec(&self, argv: &[&str]) -> Result<Output> {
        self.exec_in(&self.client_ns, argv)
    }

    /// Runs `argv` in pod `uid`'s own network namespace (`/run/netns/ferry-<uid>`, made by
    /// its agent): traffic from it is the pod's.
    pub fn pod_exec(&self, uid: &str, argv: &[&str]) -> Result<Output> {
        self.exec_in(&pod_netns(uid), argv)
    }

    /// Node `i`'s routes, neighbours, links and VXLAN FDB, for failure messages.
    pub fn describe_node(&self, i: usize) -> String {
        let show = |argv: &[&str]| {
            self.node_exec(i, argv)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| e.to_string())
        };
        format!(
            "--- {} ({})\n$ ip -br addr\n{}$ ip route\n{}$ ip neigh\n{}$ bridge fdb show dev ferry.vxlan\n{}",
            self.nodes[i].name,
            self.nodes[i].netns,
            show(&["ip", "-br", "addr"]),
            show(&["ip", "route"]),
            show(&["ip", "neigh"]),
            show(&["bridge", "fdb", "show", "dev", "ferry.vxlan"]),
        )
    }

    /// Waits until every node of the fabric is a Ready Node with a pod CIDR; returns the pod
    /// CIDRs by node name.
    pub async fn wait_nodes_ready(
        &self,
        admin: &Client,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut cidrs = BTreeMap::new();
            if let Ok(list) = admin.list("Node", &Default::default()).await {
                for n in list["items"].as_array().into_iter().flatten() {
                    let ready = n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    if let (true, Some(name), Some(cidr)) = (
                        ready,
                        n.pointer("/metadata/name").and_then(Value::as_str),
                        n.pointer("/spec/podCIDR").and_then(Value::as_str),
                    ) {
                        cidrs.insert(name.to_string(), cidr.to_string());
                    }
                }
            }
            if self.nodes.iter().all(|n| cidrs.contains_key(&n.name)) {
                return Ok(cidrs);
            }
            if Instant::now() > deadline {
                bail!(
                    "nodes not all Ready with a pod CIDR after {timeout:?} (have {cidrs:?})\n{}",
                    self.agent_logs(15)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Why a harness test with pods cannot run here (not root, no `ip`/`nsenter`, no static
/// busybox for the test image), if it cannot.
pub fn pods_skip_reason() -> Option<String> {
    if let Err(why) = available() {
        return Some(why);
    }
    if crate::image::busybox().is_none() {
        return Some("busybox-static not installed (bash .ci/setup installs it)".into());
    }
    None
}

/// Runs `scenario` on a fresh `nodes`-node fabric, then tears it down and fails if anything of
/// the run is left (namespaces, links, mounts, cgroups, processes). Skips, with a message naming
/// `test`, where [`pods_skip_reason`] says the harness cannot run.
pub async fn run_scenario(
    test: &str,
    nodes: usize,
    scenario: impl AsyncFnOnce(&mut Fabric) -> Result<()>,
) -> Result<()> {
    if let Some(why) = pods_skip_reason() {
        eprintln!("SKIP {test}: {why}");
        return Ok(());
    }
    let mut fabric = Fabric::new(nodes)?;
    let prefix = fabric.prefix().to_string();
    let result = scenario(&mut fabric).await;
    let mut left = fabric.teardown();
    drop(fabric);
    left.extend(leftovers(&prefix));
    result?;
    if !left.is_empty() {
        bail!("left behind after teardown: {left:#?}");
    }
    Ok(())
}
