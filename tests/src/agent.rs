//! A `ferry agent` process on the test machine's own network namespace, with a node name and
//! pod bridge unique to the run, so agents of different tests never share a bridge. Dropping it
//! kills the agent (by PID) and runs `ferry agent --cleanup`, which removes its containers, pod
//! namespaces, veths, mounts and bridge, also when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use crate::{Cluster, ferry_bin};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct TestAgent {
    pub node_name: String,
    pub bridge: String,
    pub server: String,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// Extra `ferry agent` flags (`start_with`).
    extra: Vec<String>,
}

impl TestAgent {
    /// Starts an agent for `cluster` named `<base>-<pid>-<n>` (joining with the cluster's
    /// token).
    pub fn start(cluster: &Cluster, base: &str) -> Result<TestAgent> {
        Self::start_with(cluster, base, &[])
    }

    /// Like [`TestAgent::start`], with extra `ferry agent` flags (kept across restarts).
    pub fn start_with(cluster: &Cluster, base: &str, extra: &[&str]) -> Result<TestAgent> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut a = TestAgent {
            node_name: format!("{base}-{pid}-{n}"),
            bridge: format!("fb{:x}", (pid * 16 + n) & 0xff_ffff),
            server: cluster.members[0].addr.clone(),
            dir: Some(tempfile::Builder::new().prefix("ferry-agent-").tempdir()?),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn(Some(&cluster.token))?;
        Ok(a)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("data dir").path()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(ferry_bin());
        cmd.arg("agent")
            .arg("--node-name")
            .arg(&self.node_name)
            .arg("--data-dir")
            .arg(self.dir())
            .arg("--pod-bridge")
            .arg(&self.bridge)
            .args(["--port", "0"])
            .arg("--cgroup-root")
            .arg(format!("/ferry/{}", self.node_name))
            .args(&self.extra)
            .env("FERRY_LOG", "info")
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, token: Option<&str>) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("agent.log"))?;
        let mut cmd = self.command();
        cmd.arg("--server")
            .arg(&self.server)
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// kill -9 of the agent; its containers keep running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same data directory (its credentials are there).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn(None)
    }

    /// Imports an OCI image archive into the agent's image store with `ferry image import`.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let out = Command::new(ferry_bin())
            .args(["image", "import"])
            .arg(archive)
            .arg("--data-dir")
            .arg(self.dir())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ferry image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The log file of attempt `attempt` of container `container` of the pod `uid`.
    pub fn container_log(&self, uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.dir()
            .join("pods")
            .join(uid)
            .join("logs")
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The last `lines` lines of the agent's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log_lines(lines)
    }

    /// The cgroup-v2 directory this agent's socket load balancing covers (its containers live
    /// below it); a test puts its client processes in a child of it.
    pub fn cgroup_dir(&self) -> Result<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next() == Some("cgroup2"))
                    .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                    .flatten()
            })
            .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount"))?;
        Ok(root.join("ferry").join(&self.node_name))
    }

    /// Runs `sh -c SCRIPT` (busybox) inside a child cgroup of this node's, as a process of the
    /// node would, and returns its output.
    pub fn node_sh(&self, script: &str) -> Result<std::process::Output> {
        let dir = self.cgroup_dir()?.join("test-client");
        std::fs::create_dir_all(&dir)?;
        let procs = dir.join("cgroup.procs");
        let out =
            Command::new(crate::image::busybox().ok_or_else(|| anyhow::anyhow!("no busybox"))?)
                .arg("sh")
                .arg("-c")
                .arg(format!("echo $$ > {} && {script}", procs.display()))
                .output()?;
        let _ = std::fs::remove_dir(&dir);
        Ok(out)
    }

    /// Runs `ferry --config CONFIG ARGS...` (the CLI as an administrator of `cluster`).
    pub fn cli(cluster: &Cluster, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(ferry_bin())
            .arg("--config")
            .arg(cluster.config_path())
            .args(args)
            .output()?)
    }

    fn log_lines(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir().join("agent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        let out = self.command().arg("--cleanup").output();
        match out {
            Ok(o) if !o.status.success() => {
                eprintln!(
                    "ferry agent --cleanup of {}: {}",
                    self.node_name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Err(e) => eprintln!("ferry agent --cleanup of {}: {e}", self.node_name),
            _ => {}
        }
        if std::env::var_os("FERRY_KEEP_TEST_DIRS").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}
