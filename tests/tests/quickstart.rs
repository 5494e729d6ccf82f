//! Root-only: the README's quickstart, as a user runs it: `ferry up` (a member and an agent in
//! one process), `examples/busybox-image.sh` (an image from this machine's busybox),
//! `ferry apply -f examples/web.yaml` (a Deployment of 3 and a NodePort Service), `ferry
//! rollout status`, then the web page by ClusterIP and by NodePort from the node, and the
//! Service's name resolved from a pod by the node's cluster DNS.
//!
//! Differences from the README, so a test never touches the machine's real cluster: its own
//! data directory, port, pod bridge and pod CIDR, and socket load balancing limited to the
//! node's own cgroup subtree (the README's default is the whole machine), where the test puts
//! its client processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_tests::{ferry_bin, free_port};
use serde_json::Value;

const NODE: &str = "quick";

fn bridge() -> String {
    format!("fq{}", std::process::id())
}

struct Up {
    child: Child,
    dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(ferry_bin())
            .args([
                "agent",
                "--cleanup",
                "--node-name",
                NODE,
                "--pod-bridge",
                &bridge(),
            ])
            .arg("--data-dir")
            .arg(self.dir.join("data/agent"))
            .output();
    }
}

fn ferry(dir: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(ferry_bin())
        .env("HOME", dir.join("home"))
        .args(args)
        .output()?)
}

fn cgroup_dir() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2"))
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 mount")?;
    Ok(root.join("ferry").join(NODE))
}

/// GET / at `ip:port` from a process in the node's cgroup (what the node's own programs see).
fn get_from_node(addr: &str) -> Result<String> {
    let dir = cgroup_dir()?.join("quickstart-client");
    std::fs::create_dir_all(&dir)?;
    let (ip, port) = addr.rsplit_once(':').context("ip:port")?;
    let out = Command::new("/bin/busybox")
        .args(["sh", "-c"])
        .arg(format!(
            "echo $$ > {}/cgroup.procs && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}",
            dir.display()
        ))
        .output()?;
    let _ = std::fs::remove_dir(&dir);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_works() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() || ferry_tests::image::busybox().is_none() {
        eprintln!("SKIP quickstart: needs root and busybox-static");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let log = std::fs::File::create(dir.join("up.log"))?;
    let cidr = format!("10.{}.0.0/16", 200 + std::process::id() % 50);
    let child = Command::new(ferry_bin())
        .args(["up", "--node-name", NODE, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--pod-bridge",
            &bridge(),
            "--cluster-cidr",
            &cidr,
            "--agent-port",
            "0",
        ])
        .args(["--cgroup-root", &format!("/ferry/{NODE}")])
        .env("HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let _up = Up {
        child,
        dir: dir.clone(),
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repo")?;
    // The admin config appears once the member is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("home/.ferry/config").exists() {
        if Instant::now() > deadline {
            bail!("ferry up never wrote its admin config");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let image = Command::new("bash")
        .arg(repo.join("examples/busybox-image.sh"))
        .arg(dir.join("data/agent"))
        .env("FERRY", ferry_bin())
        .output()?;
    assert!(image.status.success(), "busybox-image.sh: {image:?}");
    let applied = ferry(
        &dir,
        &[
            "apply",
            "-f",
            &repo.join("examples/web.yaml").to_string_lossy(),
        ],
    )?;
    assert!(applied.status.success(), "ferry apply: {applied:?}");
    let status = Command::new("timeout")
        .arg("120")
        .arg(ferry_bin())
        .env("HOME", dir.join("home"))
        .args(["rollout", "status", "deployment/web"])
        .output()?;
    assert!(
        status.status.success(),
        "ferry rollout status: {status:?}\n{}",
        std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
    );
    let svc: Value =
        serde_json::from_slice(&ferry(&dir, &["get", "svc", "web", "-o", "json"])?.stdout)?;
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
    // Ready pods take a moment to reach the endpoints and the node's maps.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let by_ip = get_from_node(&format!("{vip}:80"))?;
        let by_node_port = get_from_node(&format!("127.0.0.1:{node_port}"))?;
        if by_ip.contains("Hello from Ferry") && by_node_port.contains("Hello from Ferry") {
            break;
        }
        if Instant::now() > deadline {
            bail!("web not reachable: ClusterIP {by_ip:?}, NodePort {by_node_port:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pods = ferry(&dir, &["get", "pods", "-l", "app=web"])?;
    let listing = String::from_utf8_lossy(&pods.stdout);
    assert_eq!(
        listing.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{listing}"
    );
    // By service name from a pod: the node's cluster DNS answers for `web`.
    let pod = listing
        .lines()
        .find(|l| l.starts_with("web-"))
        .and_then(|l| l.split_whitespace().next())
        .context("a web pod")?
        .to_owned();
    let looked_up = ferry(
        &dir,
        &[
            "exec",
            &pod,
            "--",
            "nslookup",
            "web.default.svc.cluster.local",
        ],
    )?;
    let text = String::from_utf8_lossy(&looked_up.stdout);
    assert!(text.contains(&vip), "nslookup in a pod: {looked_up:?}");
    Ok(())
}
