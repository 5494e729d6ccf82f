//! A loopback etcd cluster (Debian's `etcd` binary) and a minimal etcd v3 gRPC client.
//!
//! Like Ferry, the cluster runs mutual TLS on every link (client and peer), with certificates of
//! the same kind (ECDSA P-256, issued by `ferry_control::pki` from a CA of its own).
//!
//! The client speaks the real `etcdserverpb` wire protocol over tonic, with the few messages the
//! benchmark needs written out by hand (field numbers from etcd's `rpc.proto`). That keeps the
//! build free of `protoc` and of a second gRPC stack: both stores are driven through the same
//! tonic/hyper client code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_control::pki::{self, Pki, Subject};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
}

/// Client credentials for the etcd cluster: its CA and a client certificate.
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl EtcdTls {
    fn tonic(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(pki::SERVER_NAME)
    }
}

/// One etcd v3 client connection (an HTTP/2 connection of its own, made lazily).
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    pub fn new(addr: &str, tls: &EtcdTls) -> Result<Self> {
        let ch = Endpoint::from_shared(format!("https://{addr}"))
            .with_context(|| format!("etcd address {addr:?}"))?
            .tls_config(tls.tonic())
            .with_context(|| format!("TLS settings for etcd at {addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            grpc: tonic::client::Grpc::new(ch),
        })
    }

    async fn unary<Req, Resp>(
        &mut self,
        path: &'static str,
        req: Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("etcd connection not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(resp.into_inner())
    }

    pub async fn put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<PutResponse, tonic::Status> {
        self.unary("/etcdserverpb.KV/Put", PutRequest { key, value })
            .await
    }

    pub async fn status(&mut self) -> Result<StatusResponse, tonic::Status> {
        self.unary("/etcdserverpb.Maintenance/Status", StatusRequest {})
            .await
    }
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ETCD_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .context("etcd not found on PATH: run `bash .ci/setup` (installs Debian's etcd-server), or set ETCD_BIN")
}

/// `etcd --version`'s first line, e.g. "etcd Version: 3.4.23".
pub fn etcd_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd (unknown version)".into())
}

struct EtcdMember {
    client_addr: String,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd processes on loopback. Dropping it kills every process it started (by the
/// PID it started) and removes the data directories.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    tls: EtcdTls,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl EtcdCluster {
    /// Starts `n` members with a static `--initial-cluster` and waits until they agree on a leader.
    pub async fn start(bin: &Path, n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-etcd-")
            .tempdir()?;
        let peers: Vec<(String, u16, u16)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    ferry_tests::free_port(),
                    ferry_tests::free_port(),
                )
            })
            .collect();
        let initial_cluster = peers
            .iter()
            .map(|(name, _, peer)| format!("{name}=https://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let (ca_file, tls) = make_pki(dir.path())?;
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            tls,
            _dir: dir,
        };
        for (name, client, peer) in &peers {
            let data = cluster._dir.path().join(format!("{name}.etcd"));
            let log = cluster._dir.path().join(format!("{name}.log"));
            let (cert, key) = member_cert(cluster._dir.path(), name)?;
            let out = std::fs::File::create(&log)?;
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let child = Command::new(bin)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", "ferry-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&ca_file)
                .arg("--cert-file")
                .arg(&cert)
                .arg("--key-file")
                .arg(&key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(&ca_file)
                .arg("--peer-cert-file")
                .arg(&cert)
                .arg("--peer-key-file")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            cluster.members.push(EtcdMember {
                client_addr: format!("127.0.0.1:{client}"),
                log,
                child: Some(child),
            });
        }
        cluster.wait_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub fn tls(&self) -> &EtcdTls {
        &self.tls
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// Waits until every member answers Status and names the same leader; returns its index.
    async fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_once().await {
                return Ok(i);
            }
            for m in &mut self.members {
                if let Some(c) = m.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    bail!(
                        "etcd member at {} exited ({status}); log:\n{}",
                        m.client_addr,
                        tail(&m.log, 20)
                    );
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}\n{}", m.client_addr, tail(&m.log, 10)))
                    .collect();
                bail!(
                    "etcd cluster had no leader after {timeout:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn leader_once(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let mut c = EtcdClient::new(&m.client_addr, &self.tls).ok()?;
            let s = tokio::time::timeout(Duration::from_secs(1), c.status())
                .await
                .ok()?
                .ok()?;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
            ids.push(s.header?.member_id);
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader)
    }

    /// Index of the current leader.
    pub async fn leader(&mut self) -> Result<usize> {
        self.wait_leader(Duration::from_secs(10)).await
    }
}

/// A CA for the etcd cluster in `dir/pki`, and client credentials; returns the CA file.
fn make_pki(dir: &Path) -> Result<(PathBuf, EtcdTls)> {
    let ca = Pki::create(dir).context("creating the etcd cluster CA")?;
    let ca_file = dir.join("etcd-ca.crt");
    std::fs::write(&ca_file, ca.ca_pem())?;
    let client = ca
        .issue(&Subject {
            common_name: "ferry-bench".into(),
            organizations: Vec::new(),
            serve_hosts: Vec::new(),
        })
        .context("issuing the etcd client certificate")?;
    Ok((
        ca_file,
        EtcdTls {
            ca_pem: ca.ca_pem().to_string(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
        },
    ))
}

/// A serving + client certificate for member `name` (etcd peers use one for both roles).
fn member_cert(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let ca = Pki::load(dir)
        .context("loading the etcd cluster CA")?
        .context("the etcd cluster CA is missing")?;
    let creds = ca
        .issue(&Subject {
            common_name: format!("etcd-{name}"),
            organizations: Vec::new(),
            // The name the driver's client verifies, as it does for Ferry's members (the CA
            // adds it by itself only to certificates of Ferry members).
            serve_hosts: vec![
                "127.0.0.1".into(),
                "localhost".into(),
                pki::SERVER_NAME.into(),
            ],
        })
        .with_context(|| format!("issuing the certificate of etcd member {name}"))?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, creds.cert_pem)?;
    pki::write_private(&key, &creds.key_pem)?;
    Ok((cert, key))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
