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

fn start(dir: &std::path::Path, port: u16) -> Result<Up> {
    let log = std::fs::File::create(dir.join(format!("up-{port}.log")))?;
    Ok(Up(Command::new(ferry_bin())
        .args([
            "up",
            "--node-name",
            "solo",
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
    let port = free_port();
    let up = start(dir.path(), port)?;
    let first = ready_node(dir.path()).await?;
    // Stop by SIGTERM (our own child, by PID) and start again on the same data.
    let pid = nix::unistd::Pid::from_raw(up.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
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
