//! Root-only: containers under the real runc, from a busybox root filesystem.
//!
//! One run starts several containers side by side and checks: output and exit code in the log
//! and state; a separate pid namespace, the hostname and bind-mounted `/etc` files; stop with a
//! grace period, both a container that handles SIGTERM and one (`sleep` as pid 1) that needs
//! SIGKILL; a memory limit that gets a process OOM-killed and reported so; the pids and CPU
//! limits in the container's cgroup; joining an existing network namespace; a start failure
//! with runc's reason; `list` by prefix with labels; `delete` removing bundle and cgroups.
//!
//! Everything carries the prefix `frt<pid>`: containers, the cgroup parent `ferry/frt<pid>`,
//! the network namespace, the temporary directory. A guard deletes all of it on the way out, also when an assertion
//! fails; leftovers of earlier runs whose process is gone (killed test runs) are removed first.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use ferry_agent::runtime::{
    BindMount, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, NetworkNamespace,
    OverlayDirs, Resources, Runc, RuncOptions, RuntimeError,
};
use nix::unistd::Uid;

const PREFIX: &str = "frt";
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "tail", "head", "wc", "tr", "ls", "true", "hostname", "seq",
];

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn runc_present() -> bool {
    Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Tears everything of this run down, whatever happened.
struct Guard {
    _dir: tempfile::TempDir,
    runtime: Runc,
    prefix: String,
    netns: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(list) = self.runtime.list(&self.prefix) {
            for c in list {
                if let Err(e) = self.runtime.delete(&c.id) {
                    eprintln!("cleanup: deleting {}: {e}", c.id);
                }
            }
        }
        for left in self.runtime.remove_cgroup_parent() {
            eprintln!("cleanup: cgroup {} remains", left.display());
        }
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Containers, cgroups and namespaces of earlier runs whose test process is gone.
fn remove_stale() {
    let alive = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let Ok(nodes) = fs::read_dir(h.path().join("ferry")) else {
            continue;
        };
        for node in nodes.flatten() {
            let name = node.file_name().to_string_lossy().into_owned();
            if node.path().is_dir() && name.starts_with(PREFIX) && !alive(&name) {
                dirs.push(node.path());
            }
        }
    }
    for dir in &dirs {
        for c in fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(procs) = fs::read_to_string(c.path().join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    thread::sleep(Duration::from_millis(100));
    for dir in &dirs {
        for c in fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(c.path());
        }
        let _ = fs::remove_dir(dir);
    }
    for d in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = d.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && !alive(&name) {
            let _ = fs::remove_dir_all(d.path());
        }
    }
    for ns in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = ns.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && !alive(&name) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn build_rootfs(root: &Path, busybox: &Path) {
    for d in ["bin", "proc", "dev", "sys", "etc", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    // Mount points of the bind-mounted /etc files: with them in place runc need not create
    // them in the (shared, read-only) root filesystem.
    for f in ["hosts", "hostname", "resolv.conf"] {
        fs::write(root.join("etc").join(f), "").unwrap();
    }
}

fn wait_exited(rt: &Runc, id: &str) -> ContainerInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = rt.state(id).unwrap();
        if info.status.is_exited() {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {info:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {needle:?}: {log:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn exit_of(info: &ContainerInfo) -> (Option<i32>, bool) {
    match info.status {
        ContainerStatus::Exited {
            exit_code,
            oom_killed,
        } => (exit_code, oom_killed),
        other => panic!("{}: not exited: {other:?}", info.id),
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn containers_under_runc() {
    if !Uid::effective().is_root() {
        eprintln!("SKIP runtime_runc: needs root");
        return;
    }
    if !runc_present() {
        eprintln!("SKIP runtime_runc: runc not installed (bash .ci/setup installs it)");
        return;
    }
    let Some(busybox) = busybox() else {
        eprintln!("SKIP runtime_runc: busybox-static not installed (bash .ci/setup installs it)");
        return;
    };
    let started = Instant::now();
    remove_stale();

    let prefix = format!("{PREFIX}{}", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .unwrap();
    let dir_path = dir.path().to_path_buf();
    let state_dir = dir.path().join("state");
    let rootfs = dir.path().join("rootfs");
    let logs = dir.path().join("logs");
    let etc = dir.path().join("etc");
    build_rootfs(&rootfs, &busybox);
    fs::create_dir_all(&logs).unwrap();
    fs::create_dir_all(&etc).unwrap();
    fs::write(etc.join("hosts"), "127.0.0.1 localhost\n10.9.8.7 web-0\n").unwrap();
    fs::write(etc.join("hostname"), "web-0\n").unwrap();
    fs::write(etc.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();

    let runtime = Runc::new(RuncOptions::new(&state_dir, &prefix)).unwrap();
    let netns = format!("{prefix}-ns");
    let mut guard = Guard {
        _dir: dir,
        runtime,
        prefix: prefix.clone(),
        netns: None,
    };
    let st = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(st.success(), "ip netns add {netns}");
    guard.netns = Some(netns.clone());
    let rt = &guard.runtime;

    let id = |name: &str| format!("{prefix}-{name}");
    let spec = |name: &str, script: &str| ContainerSpec {
        id: id(name),
        rootfs: rootfs.clone(),
        readonly_rootfs: true,
        args: vec!["sh".into(), "-c".into(), script.into()],
        log_path: logs.join(format!("{name}.log")),
        labels: BTreeMap::from([("container".to_owned(), name.to_owned())]),
        ..Default::default()
    };

    // Output, exit code, hostname, /etc binds, env, working dir, user.
    let mut hello = spec(
        "hello",
        "echo hello; echo err >&2; hostname; cat /etc/hosts /etc/resolv.conf; \
         echo \"greeting=$GREETING cwd=$(pwd)\"; exit 3",
    );
    hello.hostname = Some("web-0".into());
    hello.env = vec![("GREETING".into(), "hi there".into())];
    hello.working_dir = Some("/tmp".into());
    hello.mounts = ["hosts", "hostname", "resolv.conf"]
        .into_iter()
        .map(|f| BindMount {
            source: etc.join(f),
            destination: Path::new("/etc").join(f),
            readonly: true,
        })
        .collect();
    rt.run(&hello).unwrap();

    // Separate pid namespace; CPU limit; SIGKILL after the grace period (pid 1 ignores TERM).
    let mut sleeper = spec(
        "sleeper",
        "echo \"pid=$$ cmdline=$(cat /proc/1/cmdline | tr '\\0' ' ')\"; exec sleep 1000",
    );
    sleeper.resources.cpu_millis = Some(250);
    let sleeper_info = rt.run(&sleeper).unwrap();

    // A SIGTERM handler gets to run.
    let trapper = spec(
        "trapper",
        "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.05; done",
    );
    rt.run(&trapper).unwrap();

    // Memory limit: `tail` buffers the endless line of /dev/zero.
    let mut oom = spec("oom", "echo start; exec tail /dev/zero");
    oom.resources.memory_bytes = Some(16 << 20);
    rt.run(&oom).unwrap();

    // Pids limit: 20 background sleeps in a cgroup of 8 tasks.
    let mut pids = spec(
        "pids",
        "(for i in $(seq 20); do sleep 30 & done); echo spawned; exec sleep 30",
    );
    pids.resources.pids = Some(8);
    rt.run(&pids).unwrap();

    // The given network namespace: a fresh one has only lo.
    let mut net = spec("net", "cat /proc/net/dev");
    net.network = NetworkNamespace::Join(Path::new("/run/netns").join(&netns));
    rt.run(&net).unwrap();

    // An overlay root over the shared image: writes land in the upper layer only, bind mounts
    // still go on top, and nothing is mounted on the node. A read-only one refuses writes.
    let layer = dir_path.join("layer");
    let mut overlay = spec(
        "overlay",
        "echo written >/written && cat /written && cat /etc/hostname && \
         grep ' / / ' /proc/self/mountinfo",
    );
    overlay.readonly_rootfs = false;
    overlay.overlay = Some(OverlayDirs {
        upper: layer.join("upper"),
        work: layer.join("work"),
    });
    overlay.mounts = vec![BindMount {
        source: etc.join("hostname"),
        destination: "/etc/hostname".into(),
        readonly: true,
    }];
    rt.run(&overlay).unwrap();
    let mut ro_overlay = spec("ro-overlay", "echo x >/written || echo refused");
    ro_overlay.overlay = Some(OverlayDirs {
        upper: dir_path.join("ro-layer/upper"),
        work: dir_path.join("ro-layer/work"),
    });
    rt.run(&ro_overlay).unwrap();

    // runc's reason for a start failure comes back.
    let bad = ContainerSpec {
        args: vec!["/bin/does-not-exist".into()],
        ..spec("bad", "")
    };
    match rt.run(&bad) {
        Err(RuntimeError::StartFailed { reason, .. }) => {
            assert!(reason.contains("does-not-exist"), "{reason}")
        }
        other => panic!("bad: {other:?}"),
    }
    assert!(matches!(
        rt.run(&hello),
        Err(RuntimeError::AlreadyExists { .. })
    ));

    // --- hello
    let info = wait_exited(rt, &id("hello"));
    assert_eq!(exit_of(&info), (Some(3), false));
    assert_eq!(info.labels["container"], "hello");
    assert_eq!(info.log_path, hello.log_path);
    let log = fs::read_to_string(&hello.log_path).unwrap();
    for needle in [
        "hello\n",
        "err\n",
        "web-0\n",
        "10.9.8.7 web-0",
        "nameserver 10.96.0.10",
        "greeting=hi there cwd=/tmp",
    ] {
        assert!(log.contains(needle), "hello log lacks {needle:?}: {log:?}");
    }

    // --- sleeper
    let ContainerStatus::Running { pid } = sleeper_info.status else {
        panic!("sleeper: {sleeper_info:?}");
    };
    let log = wait_log(&sleeper.log_path, "pid=");
    assert!(log.contains("pid=1 cmdline=sh -c"), "{log:?}");
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        fs::read_link("/proc/self/ns/pid").unwrap(),
        "the container shares our pid namespace"
    );
    let dirs = rt.cgroup_dirs(&rt.cgroups_path(&id("sleeper")));
    if let Some(d) = dirs.iter().find(|d| d.join("cpu.cfs_quota_us").exists()) {
        assert_eq!(read_trimmed(&d.join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read_trimmed(&d.join("cpu.cfs_period_us")), "100000");
    } else if let Some(d) = dirs.iter().find(|d| d.join("cpu.max").exists()) {
        assert_eq!(read_trimmed(&d.join("cpu.max")), "25000 100000");
    } else {
        panic!("no cpu cgroup among {dirs:?}");
    }
    let grace = Duration::from_millis(300);
    let t = Instant::now();
    let info = rt.stop(&id("sleeper"), grace).unwrap();
    assert!(t.elapsed() >= grace, "stopped before the grace period");
    assert_eq!(exit_of(&info), (Some(137), false));

    // --- trapper
    wait_log(&trapper.log_path, "ready");
    let t = Instant::now();
    let info = rt.stop(&id("trapper"), Duration::from_secs(10)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM was not handled"
    );
    assert_eq!(exit_of(&info), (Some(0), false));
    wait_log(&trapper.log_path, "got-term");

    // --- oom
    let info = wait_exited(rt, &id("oom"));
    assert_eq!(exit_of(&info), (Some(137), true));
    let log = fs::read_to_string(&oom.log_path).unwrap();
    assert!(log.contains("start"), "{log:?}");

    // --- pids
    let log = wait_log(&pids.log_path, "spawned");
    assert!(log.contains("can't fork"), "{log:?}");
    let dirs = rt.cgroup_dirs(&rt.cgroups_path(&id("pids")));
    let pcg = dirs
        .iter()
        .find(|d| d.join("pids.max").exists())
        .unwrap_or_else(|| panic!("no pids cgroup among {dirs:?}"));
    assert_eq!(read_trimmed(&pcg.join("pids.max")), "8");
    let current: u32 = read_trimmed(&pcg.join("pids.current")).parse().unwrap();
    assert!(current <= 8, "pids.current {current}");
    assert!(rt.state(&id("pids")).unwrap().status.is_running());

    // --- net
    let info = wait_exited(rt, &id("net"));
    assert_eq!(exit_of(&info), (Some(0), false));
    let log = fs::read_to_string(&net.log_path).unwrap();
    let ifaces: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|n| !n.starts_with("Inter") && !n.contains('|'))
        .collect();
    assert_eq!(ifaces, ["lo"], "{log:?}");

    // --- overlay
    let info = wait_exited(rt, &id("overlay"));
    let log = fs::read_to_string(&overlay.log_path).unwrap();
    assert_eq!(exit_of(&info), (Some(0), false), "{log}");
    assert!(log.contains("written\nweb-0\n"), "{log:?}");
    assert!(
        log.contains(" - overlay overlay "),
        "root is not the overlay: {log:?}"
    );
    assert_eq!(read_trimmed(&layer.join("upper/written")), "written");
    assert!(!rootfs.join("written").exists(), "the image was written");
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&*layer.to_string_lossy()),
        "the overlay shows on the node: {host_mounts}"
    );
    let info = wait_exited(rt, &id("ro-overlay"));
    assert_eq!(exit_of(&info), (Some(0), false));
    wait_log(&ro_overlay.log_path, "refused");
    assert!(!dir_path.join("ro-layer/upper/written").exists());

    // --- list (adoption) and delete
    let listed = rt.list(&prefix).unwrap();
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    let mut expected = [
        "bad",
        "hello",
        "net",
        "oom",
        "overlay",
        "pids",
        "ro-overlay",
        "sleeper",
        "trapper",
    ]
    .map(&id)
    .to_vec();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(rt.list("no-such-prefix").unwrap().is_empty());
    // A new runtime over the same state directory (an agent restart) sees the same.
    let again = Runc::new(RuncOptions::new(&state_dir, &prefix)).unwrap();
    let relisted = again.list(&prefix).unwrap();
    assert_eq!(relisted.len(), listed.len());
    assert!(
        relisted
            .iter()
            .any(|c| c.id == id("pids") && c.status.is_running())
    );
    assert_eq!(
        relisted
            .iter()
            .find(|c| c.id == id("oom"))
            .map(|c| c.labels["container"].clone()),
        Some("oom".to_owned())
    );

    for c in &listed {
        let cg = rt.cgroups_path(&c.id);
        rt.delete(&c.id).unwrap();
        assert!(!rt.bundle_dir(&c.id).exists(), "{} bundle remains", c.id);
        for d in rt.cgroup_dirs(&cg) {
            assert!(!d.exists(), "{} remains", d.display());
        }
        assert!(matches!(
            rt.state(&c.id),
            Err(RuntimeError::NotFound { .. })
        ));
        rt.delete(&c.id).unwrap();
    }
    assert!(rt.list(&prefix).unwrap().is_empty());
    // Logs belong to the caller and survive.
    assert!(hello.log_path.exists());
    assert!(matches!(
        rt.run(&ContainerSpec {
            resources: Resources {
                memory_bytes: Some(0),
                ..Default::default()
            },
            ..spec("zero", "true")
        }),
        Err(RuntimeError::InvalidSpec { .. })
    ));

    eprintln!("runtime_runc: {:?}", started.elapsed());
}
