//! Test support: control-plane clusters of real `ferry server` processes on loopback.
//!
//! Every member is a child process with its own data directory under a per-cluster temporary
//! directory and its own port. Processes are only ever signalled by the PID we started, and the
//! [`Cluster`] guard kills them all and removes the directory when it is dropped, also when a
//! test fails.

pub mod agent;
pub mod image;
pub mod sim;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, ClientConfig};

pub mod netns;

/// The `ferry` binary under test: `$FERRY_BIN`, else `target/<profile>/ferry` next to the test
/// executable (built by `cargo build` before `cargo test`, as the README's test command does).
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/ferry
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("ferry")
}

/// A loopback port that is free right now.
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A port on `ip` that is free right now.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One `ferry server` process.
pub struct Member {
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Member {
    fn spawn(&mut self, join: Option<(&str, &str)>) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(ferry_bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.addr)
            .args(["--admin-config", "-"])
            .args(&self.extra)
            .env("FERRY_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((through, token)) = join {
            cmd.arg("--join").arg(through).arg("--token").arg(token);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", ferry_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The first panic this member's log records (with the two lines after it), if any.
    pub fn panic_message(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        panics(&all).next().map(|p| p.join("\n"))
    }

    /// The last lines of this member's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        // A panic's message is followed by its backtrace, which can push it out of the tail:
        // show every panic message (with the two lines after it) first.
        let mut out: Vec<&str> = Vec::new();
        for p in panics(&all[..start]) {
            out.extend(p);
            out.push("[...]");
        }
        out.extend(&all[start..]);
        out.join("\n")
    }
}

/// Each panic message in `lines`, with the two lines after it.
fn panics<'a>(lines: &'a [&'a str]) -> impl Iterator<Item = &'a [&'a str]> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked at"))
        .map(|(i, _)| &lines[i..(i + 3).min(lines.len())])
}

/// Clusters in one test binary run one at a time: the machines are small (2 cores) and the
/// fault-tolerance tests measure failover, which a neighbour's load would distort.
static CLUSTER_SLOT: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// A control-plane cluster of `ferry server` processes.
pub struct Cluster {
    pub members: Vec<Member>,
    /// The admin client config the first member wrote.
    pub config: Option<ClientConfig>,
    /// The join token the first member wrote.
    pub token: String,
    /// The address members listen on (each on a port of its own).
    listen_ip: std::net::IpAddr,
    dir: tempfile::TempDir,
    _slot: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

impl Cluster {
    /// Starts `n` members: the first bootstraps, the others join through it. `extra` flags go to
    /// every member (e.g. `--snapshot-every 100`).
    pub async fn start(n: usize, extra: &[&str]) -> Result<Cluster> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), n, extra).await
    }

    /// Like [`Cluster::start`], with the members listening on `ip` instead of loopback (e.g.
    /// the host's address on a [`netns::Fabric`], so that agents in node namespaces reach
    /// them). Clients verify the members' certificate by name, not address.
    pub async fn start_on(ip: std::net::IpAddr, n: usize, extra: &[&str]) -> Result<Cluster> {
        let slot = CLUSTER_SLOT.clone().lock_owned().await;
        let dir = tempfile::Builder::new().prefix("ferry-test-").tempdir()?;
        let mut cluster = Cluster {
            members: Vec::new(),
            config: None,
            token: String::new(),
            listen_ip: ip,
            dir,
            _slot: slot,
        };
        for _ in 0..n {
            cluster.add_member_process(extra)?;
        }
        let first = cluster.members[0].addr.clone();
        cluster.members[0].spawn(None)?;
        cluster.wait_credentials(Duration::from_secs(30)).await?;
        cluster.wait_ready(0, Duration::from_secs(30)).await?;
        let token = cluster.token.clone();
        for i in 1..n {
            cluster.members[i].spawn(Some((&first, &token)))?;
        }
        cluster.wait_voters(n, Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Waits for the first member to write the admin config and the join token.
    async fn wait_credentials(&mut self, timeout: Duration) -> Result<()> {
        let dir = self.members[0].data_dir.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let token = std::fs::read_to_string(dir.join("join-token")).unwrap_or_default();
            if !token.trim().is_empty()
                && let Ok(cfg) = ClientConfig::load(&dir.join("admin.yaml"))
            {
                self.token = token.trim().to_string();
                self.config = Some(cfg);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the first member wrote no credentials in {timeout:?}:\n{}",
                    self.members[0].log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Path of the admin client config (for `ferry --config`).
    pub fn config_path(&self) -> PathBuf {
        self.members[0].data_dir.join("admin.yaml")
    }

    /// Runs the `ferry` CLI against the cluster: (success, stdout + stderr).
    pub async fn ferry(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = tokio::process::Command::new(ferry_bin())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .output()
            .await
            .context("running ferry")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// [`Cluster::ferry`] that must succeed: its output.
    pub async fn ferry_ok(&self, args: &[&str]) -> Result<String> {
        let (ok, out) = self.ferry(args).await?;
        if !ok {
            bail!("ferry {}: {out}", args.join(" "));
        }
        Ok(out)
    }

    fn add_member_process(&mut self, extra: &[&str]) -> Result<usize> {
        let i = self.members.len();
        let data_dir = self.dir.path().join(format!("member-{i}"));
        let log = self.dir.path().join(format!("member-{i}.log"));
        self.members.push(Member {
            addr: std::net::SocketAddr::new(self.listen_ip, free_port_on(self.listen_ip))
                .to_string(),
            data_dir,
            log,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        });
        Ok(i)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Addresses of every member, comma-separated (what `--server` takes).
    pub fn addrs(&self) -> String {
        self.members
            .iter()
            .map(|m| m.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn tls(&self) -> ferry_api::client::TlsConfig {
        self.config.as_ref().expect("cluster credentials").tls()
    }

    /// An admin client that knows every member.
    pub fn client(&self) -> Client {
        Client::new(&self.addrs(), &self.tls()).expect("client")
    }

    /// A client of member 0 that authenticates with bearer `token` only (no certificate; the
    /// server verified against the cluster CA).
    pub fn bearer_client(&self, token: &str) -> Result<Client> {
        let tls = ferry_api::client::TlsConfig {
            ca_pem: self.tls().ca_pem,
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        Ok(Client::new(&self.members[0].addr, &tls)?.with_token(token)?)
    }

    /// An admin client bound to one member.
    pub fn member_client(&self, i: usize) -> Client {
        Client::new(&self.members[i].addr, &self.tls()).expect("client")
    }

    /// (Re)starts member `i` with its existing data directory.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].spawn(None)
    }

    /// Starts member `i` afresh (empty data directory), joining through member `through`.
    pub fn start_joining(&mut self, i: usize, through: usize) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.members[i].data_dir);
        let join = self.members[through].addr.clone();
        let token = self.token.clone();
        self.members[i].spawn(Some((&join, &token)))
    }

    /// Waits until member `i` answers and sees a leader.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let c = self.member_client(i);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(m) = c.members().await
                && m.leader_id != 0
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "member {i} not ready after {timeout:?}; log:\n{}",
                    self.members[i].log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the cluster reports `n` voters and a leader.
    pub async fn wait_voters(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(m) = self.client().members().await
                && m.leader_id != 0
                && m.members.iter().filter(|m| m.voter).count() == n
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}\n{}", m.addr, m.log_tail(80)))
                    .collect();
                bail!(
                    "cluster did not reach {n} voters in {timeout:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index of the member that currently leads (asking the running members).
    pub async fn leader(&self) -> Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() {
                continue;
            }
            if let Ok(r) = self.member_client(i).members().await
                && let Some(l) = r.members.iter().find(|x| x.leader)
                && let Some(idx) = self.members.iter().position(|m| m.addr == l.addr)
            {
                return Ok(idx);
            }
        }
        bail!("no member knows a leader")
    }

    /// The raft id member `i` has (from its members listing).
    pub async fn member_id(&self, i: usize) -> Result<u64> {
        let r = self.client().members().await?;
        r.members
            .iter()
            .find(|m| m.addr == self.members[i].addr)
            .map(|m| m.id)
            .context("member not in the membership")
    }
}

/// A small ConfigMap manifest.
pub fn configmap(name: &str, value: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"v": value},
    })
}

/// Runs `argv` in pod `default/pod` (its first container) through the API server and the
/// node's agent, as `ferry exec` does; its output, or an error naming the exit code.
pub async fn exec_in_pod<S: AsRef<str>>(
    c: &Client,
    pod: &str,
    argv: &[S],
    timeout_s: u32,
) -> Result<String> {
    let command: Vec<String> = argv.iter().map(|a| a.as_ref().to_string()).collect();
    let (out, code) = c
        .pod_exec(ferry_api::proto::PodExecRequest {
            namespace: "default".into(),
            pod: pod.into(),
            container: String::new(),
            command: command.clone(),
            timeout_seconds: timeout_s,
            uid: String::new(),
        })
        .await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    if code != 0 {
        bail!("{command:?} in pod {pod} exited with {code}: {out}");
    }
    Ok(out)
}
