//! `ferry up`: a single-node cluster (member + agent) in one process, as the README runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, ClientConfig};
use ferry_tests::{ferry_bin, free_port};
use serde_json::Value;

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This run's pod bridge (never the default `ferry0`, which a real `ferry up` may own).
fn bridge() -> String {
    format!("fu{}", std::process::id())
}

/// Removes what the agent of `ferry up` made on this machine.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(ferry_bin())
            .args([
                "agent",
                "--cleanup",
                "--node-name",
                "solo",
                "--pod-bridge",
                &bridge(),
            ])
            .arg("--data-dir")
            .arg(self.0.join("data/agent"))
            .output();
    }
}

fn start(dir: &std::path::Path, port: u16) -> Result<Up> {
    let log = std::fs::File::create(dir.join(format!("up-{port}.log")))?;
    Ok(Up(Command::new(ferry_bin())
        .args([
            "up",
            "--node-name",
            "solo",
            "--pod-bridge",
            &bridge(),
            "--cluster-cidr",
            "10.243.0.0/16",
            "--agent-port",
            "0",
            "--cgroup-root",
            "/ferry/solo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env("HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?))
}

async fn ready_node(dir: &std::path::Path) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(cfg) = ClientConfig::load(&dir.join("home/.ferry/config"))
            && let Ok(n) = Client::from_config(&cfg)?.get("Node", "", "solo").await
            && n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            && n["spec"]["podCIDR"].is_string()
        {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("ferry up never reported a Ready node");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_single_node_cluster_and_restarts_into_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _cleanup = Cleanup(dir.path().to_path_buf());
    let port = free_port();
    let up = start(dir.path(), port)?;
    let first = ready_node(dir.path()).await?;
    // Stop by SIGTERM (our own child, by PID) and start again on the same data.
    let mut up = up;
    let pid = nix::unistd::Pid::from_raw(up.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    // It stops by itself (its own agent's open watches must not keep the member alive).
    let deadline = Instant::now() + Duration::from_secs(15);
    while up.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("ferry up did not stop within 15 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(up);
    let _again = start(dir.path(), port)?;
    let second = ready_node(dir.path()).await?;
    assert_eq!(
        first["metadata"]["uid"], second["metadata"]["uid"],
        "the same Node, kept across restarts"
    );
    assert_eq!(first["spec"]["podCIDR"], second["spec"]["podCIDR"]);
    Ok(())
}
