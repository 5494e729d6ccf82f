//! Node lifecycle: register the Node (capacity, allocatable, addresses, system info, conditions),
//! renew its heartbeat Lease in `kube-node-lease`, refresh its status, and learn its pod CIDR from
//! the control plane.
//!
//! Everything goes through the API with the node's own certificate; the node authorizer lets it
//! write only its own Node and Lease.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_api::client::{Client, ClientError};
use serde_json::{Value, json};

use crate::{credentials, sysinfo};

/// How often the Lease is renewed, and for how long it is valid.
pub const LEASE_RENEW: Duration = Duration::from_secs(5);
pub const LEASE_DURATION_SECONDS: i64 = 20;
/// How often the Node's status (conditions, heartbeat times) is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(20);
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The agent endpoint's default port (the kubelet's).
pub const DEFAULT_PORT: u16 = 10250;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Member addresses, comma-separated.
    pub server: String,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// The bridge pods' veths join (one per node namespace).
    pub pod_bridge: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Registries (`host[:port]`) pulled from over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Cross-node pod routing: direct routes or VXLAN (`network::routes`).
    pub tunnel: crate::network::routes::Tunnel,
    /// Port of the agent's logs/exec endpoint (0: any free port; the Node's status says which).
    pub port: u16,
    /// The cgroup-v2 directory (relative to the cgroup-v2 mount) whose processes get socket
    /// load balancing: `/` for the whole node, or the node's own subtree (`/ferry/<node>`)
    /// when several simulated nodes share one kernel.
    pub cgroup_root: String,
    /// Where BPF maps and links are pinned (default `/sys/fs/bpf/ferry/<node>`).
    pub bpf_pin_dir: Option<PathBuf>,
    /// The interface NodePort and LoadBalancer traffic from outside arrives on: `auto` (the
    /// one holding the node's address), `none`, or a name.
    pub uplink: String,
    /// The XDP fast path for north-south traffic on the uplink.
    pub lb_acceleration: crate::datapath::socklb::Acceleration,
    /// The cluster's pod network (the servers' `--cluster-cidr`): pods' traffic to anywhere
    /// else is masqueraded to the node's address when `masquerade` is set.
    pub cluster_cidr: String,
    pub masquerade: bool,
    /// Resolvers the cluster DNS forwards other names to (default: the node's; `dns`).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
}

impl AgentOptions {
    /// Where the control plane's local provisioner puts this node's volumes
    /// (`crate::localvolumes`).
    pub fn local_volumes_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("local-volumes")
    }

    /// Options with the defaults for everything but the essentials.
    pub fn new(server: &str, node_name: &str, data_dir: impl Into<PathBuf>) -> Self {
        AgentOptions {
            server: server.into(),
            node_name: node_name.into(),
            node_ip: None,
            data_dir: data_dir.into(),
            token: None,
            pod_bridge: crate::network::DEFAULT_BRIDGE.into(),
            cluster_domain: "cluster.local".into(),
            insecure_registries: Vec::new(),
            tunnel: crate::network::routes::Tunnel::None,
            port: DEFAULT_PORT,
            cgroup_root: "/".into(),
            bpf_pin_dir: None,
            uplink: "auto".into(),
            lb_acceleration: Default::default(),
            cluster_cidr: "10.244.0.0/16".into(),
            masquerade: true,
            dns_upstreams: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Credentials(#[from] credentials::CredentialsError),
    #[error("API: {0}")]
    Api(#[from] ClientError),
    #[error("{0}")]
    Config(String),
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn micro_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The Node's status as this agent sees it.
pub fn node_status(opts: &AgentOptions, ip: Option<IpAddr>, transition: &str) -> Value {
    let cpu = sysinfo::cpus().to_string();
    let mem = format!("{}Ki", sysinfo::memory_kib());
    let pods = sysinfo::MAX_PODS.to_string();
    let mut addresses = vec![json!({"type": "Hostname", "address": opts.node_name})];
    if let Some(ip) = ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    let hb = now();
    let cond = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": hb, "lastTransitionTime": transition})
    };
    json!({
        "capacity": {"cpu": cpu, "memory": mem, "pods": pods},
        "allocatable": {"cpu": cpu, "memory": mem, "pods": pods},
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": opts.port}},
        "conditions": [
            cond("Ready", "True", "FerryAgentReady", "ferry agent is posting ready status"),
            cond("MemoryPressure", "False", "FerryAgentHasSufficientMemory", "ferry agent has sufficient memory available"),
            cond("DiskPressure", "False", "FerryAgentHasNoDiskPressure", "ferry agent has no disk pressure"),
            cond("PIDPressure", "False", "FerryAgentHasSufficientPID", "ferry agent has sufficient PID available"),
        ],
        "nodeInfo": {
            "machineID": sysinfo::machine_id(),
            "systemUUID": sysinfo::machine_id(),
            "bootID": sysinfo::boot_id(),
            "kernelVersion": sysinfo::kernel_version(),
            "osImage": sysinfo::os_image(),
            "containerRuntimeVersion": "runc",
            "kubeletVersion": format!("ferry-{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": sysinfo::architecture(),
        },
    })
}

/// Creates the Node if needed, then writes its status. Returns the Node as stored.
pub async fn register(
    client: &Client,
    opts: &AgentOptions,
    ip: Option<IpAddr>,
    transition: &str,
) -> Result<Value, AgentError> {
    let name = &opts.node_name;
    // Where the control plane's local provisioner puts this node's volumes.
    let volume_dir = opts.local_volumes_dir().display().to_string();
    let node = match client.get("Node", "", name).await {
        Ok(n)
            if n.pointer("/metadata/annotations/ferry.dev~1local-volume-dir")
                != Some(&json!(volume_dir)) =>
        {
            let patch =
                json!({"metadata": {"annotations": {"ferry.dev/local-volume-dir": volume_dir}}});
            client.patch("Node", "", name, &patch).await?
        }
        Ok(n) => n,
        Err(e) if e.is_not_found() => {
            let body = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name,
                    "annotations": {"ferry.dev/local-volume-dir": volume_dir},
                    "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": sysinfo::architecture(),
                }},
            });
            match client.create("Node", "", &body).await {
                Ok(n) => n,
                Err(e) if e.is_already_exists() => client.get("Node", "", name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    update_status(client, node, opts, ip, transition).await
}

async fn update_status(
    client: &Client,
    mut node: Value,
    opts: &AgentOptions,
    ip: Option<IpAddr>,
    transition: &str,
) -> Result<Value, AgentError> {
    for _ in 0..5 {
        node["status"] = node_status(opts, ip, transition);
        match client.update_status("Node", &node).await {
            Ok(n) => return Ok(n),
            Err(e) if e.is_conflict() => node = client.get("Node", "", &opts.node_name).await?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::Config(
        "node status kept conflicting; another writer for this node?".into(),
    ))
}

/// Renews (or creates) the node's heartbeat Lease.
pub async fn renew_lease(client: &Client, node: &str) -> Result<(), AgentError> {
    let patch = json!({"spec": {"holderIdentity": node, "renewTime": micro_now(),
                                "leaseDurationSeconds": LEASE_DURATION_SECONDS}});
    match client.patch("Lease", LEASE_NAMESPACE, node, &patch).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                         "acquireTime": micro_now(), "renewTime": micro_now()},
            });
            match client.create("Lease", LEASE_NAMESPACE, &lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Keeps the Lease fresh and the Node's status current.
async fn heartbeat(
    client: Client,
    opts: AgentOptions,
    ip: Option<IpAddr>,
    transition: String,
    mut node: Value,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &opts.node_name).await {
                    tracing::warn!("renewing the node lease: {e}");
                }
            }
            _ = status_tick.tick() => {
                match client.get("Node", "", &opts.node_name).await {
                    Ok(n) => match update_status(&client, n, &opts, ip, &transition).await {
                        Ok(n) => node = n,
                        Err(e) => tracing::warn!("updating node status: {e}"),
                    },
                    Err(e) if e.is_not_found() => {
                        // Deleted by an operator: register again, as the kubelet does.
                        if let Ok(n) = register(&client, &opts, ip, &transition).await {
                            node = n;
                        }
                    }
                    Err(e) => tracing::warn!("reading the node: {e}"),
                }
            }
        }
        let _ = &node;
    }
}

/// The node's pod CIDR, once the control plane has assigned one.
async fn wait_pod_cidr(client: &Client, name: &str, mut node: Value) -> String {
    loop {
        if let Some(c) = node.pointer("/spec/podCIDR").and_then(Value::as_str) {
            tracing::info!(pod_cidr = %c, "pod CIDR assigned");
            return c.to_owned();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(n) = client.get("Node", "", name).await {
            node = n;
        }
    }
}

/// Nameservers and search domains from the node's resolv.conf, for pods (loopback resolvers
/// are unreachable from a pod's namespace and are left out).
fn node_dns() -> crate::network::DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = crate::network::DnsConfig::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => {
                if let Some(ip) = parts.next().and_then(|p| p.parse::<IpAddr>().ok())
                    && !ip.is_loopback()
                {
                    dns.nameservers.push(ip);
                }
            }
            Some("search") => dns.searches.extend(parts.map(String::from)),
            _ => {}
        }
    }
    dns
}

async fn start_pods(
    client: &Client,
    ca_pem: &str,
    opts: &AgentOptions,
    ip: Option<IpAddr>,
    pod_cidr: &str,
) -> Result<std::sync::Arc<crate::pods::Shared>, AgentError> {
    use crate::network::{Ipv4Cidr, PodNetwork, PodNetworkOptions};
    let cfg = |e: String| AgentError::Config(e);
    let (net, prefix) = pod_cidr
        .split_once('/')
        .ok_or_else(|| cfg(format!("pod CIDR {pod_cidr:?} is not ADDRESS/PREFIX")))?;
    let cidr = Ipv4Cidr::new(
        net.parse()
            .map_err(|e| cfg(format!("pod CIDR {pod_cidr:?}: {e}")))?,
        prefix
            .parse()
            .map_err(|e| cfg(format!("pod CIDR {pod_cidr:?}: {e}")))?,
    )
    .map_err(|e| cfg(e.to_string()))?;
    let mut net_opts = PodNetworkOptions::new(cidr, &opts.data_dir);
    net_opts.bridge = opts.pod_bridge.clone();
    let network = PodNetwork::new(net_opts)
        .await
        .map_err(|e| cfg(format!("pod network: {e}")))?;
    let cluster_dns = Some(IpAddr::V4(network.gateway()));
    let runtime = crate::runtime::Runc::new(crate::runtime::RuncOptions::new(
        opts.data_dir.join("runtime"),
        &opts.node_name,
    ))
    .map_err(|e| cfg(format!("container runtime: {e}")))?;
    let images = crate::image::ImageStore::open(&opts.data_dir)
        .map_err(|e| cfg(format!("image store: {e}")))?;
    let pods_dir = opts.data_dir.join("pods");
    std::fs::create_dir_all(&pods_dir)
        .map_err(|e| cfg(format!("creating {}: {e}", pods_dir.display())))?;
    let tokens_dir = opts.data_dir.join(crate::pods::volumes::TOKEN_STORE);
    crate::pods::volumes::ensure_token_store(&tokens_dir).map_err(|e| cfg(e.to_string()))?;
    Ok(std::sync::Arc::new(crate::pods::Shared {
        client: client.clone(),
        node_name: opts.node_name.clone(),
        node_ip: ip,
        runtime: std::sync::Arc::new(runtime),
        images: std::sync::Arc::new(images),
        network: std::sync::Arc::new(network),
        pods_dir,
        local_volumes: opts.local_volumes_dir(),
        dns: node_dns(),
        cluster_domain: opts.cluster_domain.clone(),
        pull: crate::image::PullOptions {
            insecure_registries: opts.insecure_registries.clone(),
            auth: None,
        },
        cluster_dns,
        ca_pem: ca_pem.to_string(),
        tokens_dir,
    }))
}

/// An error with its causes, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Where BPF objects of this node are pinned.
pub fn pin_dir(opts: &AgentOptions) -> PathBuf {
    opts.bpf_pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ferry").join(&opts.node_name))
}

/// The interface holding `ip`.
fn interface_with(ip: std::net::Ipv4Addr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let addr = a.address?;
        let sin = addr.as_sockaddr_in()?;
        (sin.ip() == ip).then(|| a.interface_name.clone())
    })
}

/// Where north-south translation runs: `--uplink` names the interface, `none` turns it off,
/// `auto` picks the interface holding the node's address (none for a loopback address, where
/// there is no outside).
fn uplink_for(
    opts: &AgentOptions,
    ip: Option<IpAddr>,
    pod_cidr: &str,
) -> Result<Option<crate::datapath::socklb::Uplink>, AgentError> {
    let Some(IpAddr::V4(node_ip)) = ip else {
        return Ok(None);
    };
    let ifname = match opts.uplink.as_str() {
        "none" => return Ok(None),
        "auto" | "" => {
            if node_ip.is_loopback() {
                return Ok(None);
            }
            match interface_with(node_ip) {
                Some(i) => i,
                None => {
                    tracing::warn!(%node_ip, "no interface holds the node address: NodePorts from outside are off (set --uplink)");
                    return Ok(None);
                }
            }
        }
        other => other.to_owned(),
    };
    let (net, prefix) = pod_cidr
        .split_once('/')
        .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
        .ok_or_else(|| {
            AgentError::Config(format!("pod CIDR {pod_cidr:?} is not ADDRESS/PREFIX"))
        })?;
    Ok(Some(crate::datapath::socklb::Uplink {
        ifname,
        node_ip,
        pod_net: net,
        pod_prefix: prefix,
        acceleration: opts.lb_acceleration,
        masquerade: if opts.masquerade {
            Some(
                opts.cluster_cidr
                    .split_once('/')
                    .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
                    .ok_or_else(|| {
                        AgentError::Config(format!(
                            "--cluster-cidr {:?}: expected ADDRESS/PREFIX, e.g. 10.244.0.0/16",
                            opts.cluster_cidr
                        ))
                    })?,
            )
        } else {
            None
        },
    }))
}

fn datapath_options(
    opts: &AgentOptions,
    ip: Option<IpAddr>,
    pod_cidr: &str,
) -> Result<crate::datapath::sync::SyncOptions, AgentError> {
    let root = crate::datapath::socklb::cgroup2_root()
        .ok_or_else(|| AgentError::Config("no cgroup-v2 hierarchy is mounted".into()))?;
    let rel = opts.cgroup_root.trim_start_matches('/');
    if rel.split('/').any(|p| p == "..") {
        return Err(AgentError::Config(format!(
            "--cgroup-root {:?}: must not contain `..`",
            opts.cgroup_root
        )));
    }
    let cgroup = root.join(rel);
    std::fs::create_dir_all(&cgroup)
        .map_err(|e| AgentError::Config(format!("creating cgroup {}: {e}", cgroup.display())))?;
    Ok(crate::datapath::sync::SyncOptions {
        pin_dir: pin_dir(opts),
        cgroup,
        node_ips: match ip {
            Some(IpAddr::V4(v4)) => vec![v4],
            _ => vec![],
        },
        node_name: opts.node_name.clone(),
        uplink: uplink_for(opts, ip, pod_cidr)?,
    })
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    if let Some(e) = ferry_api::validation::dns1123_subdomain_error(&opts.node_name) {
        return Err(AgentError::Config(format!(
            "--node-name {:?}: {e}",
            opts.node_name
        )));
    }
    // Bound before registering so the Node can name the actual port.
    let endpoint = tokio::net::TcpListener::bind(("0.0.0.0", opts.port))
        .await
        .map_err(|e| AgentError::Config(format!("--port {}: {e}", opts.port)))?;
    let mut opts = opts;
    opts.port = endpoint
        .local_addr()
        .map_err(|e| AgentError::Config(e.to_string()))?
        .port();
    let tls = credentials::obtain(
        &opts.data_dir,
        &opts.server,
        &opts.node_name,
        opts.token.as_deref(),
    )
    .await?;
    let client = Client::new(&opts.server, &tls)?;
    let ip = opts
        .node_ip
        .or_else(|| sysinfo::local_ip_towards(&opts.server));
    let transition = now();
    let node = loop {
        match register(&client, &opts, ip, &transition).await {
            Ok(n) => break n,
            Err(AgentError::Api(e)) if e.is_unavailable() => {
                tracing::warn!("registering the node: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(node = %opts.node_name, ip = ?ip, "node registered");
    // Routes to the other nodes' pod CIDRs: a task of its own, resyncing on Node events.
    tokio::spawn(crate::network::routes::run(
        client.clone(),
        crate::network::routes::RouteOptions {
            node_name: opts.node_name.clone(),
            node_ip: ip,
            tunnel: opts.tunnel,
        },
    ));
    // Deleted local volumes' data: removed from this node, then released.
    tokio::spawn(crate::localvolumes::run_cleanup(
        client.clone(),
        opts.local_volumes_dir(),
        opts.node_name.clone(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        opts.clone(),
        ip,
        transition,
        node.clone(),
    ));
    let pods = async {
        let pod_cidr = wait_pod_cidr(&client, &opts.node_name, node).await;
        // Service load balancing: a task of its own, resyncing on Service and EndpointSlice
        // events. It needs the pod CIDR (local or remote backends for traffic from outside).
        match datapath_options(&opts, ip, &pod_cidr) {
            Ok(dp) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::datapath::sync::run(client, dp).await {
                        tracing::error!(
                            "service load balancing is off on this node: {}",
                            error_chain(&e)
                        );
                    }
                });
            }
            Err(e) => tracing::error!("service load balancing is off on this node: {e}"),
        }
        match start_pods(&client, &tls.ca_pem, &opts, ip, &pod_cidr).await {
            Ok(shared) => {
                tracing::info!(pod_cidr = %pod_cidr, port = opts.port, "running this node's pods");
                // Service discovery DNS on the pod bridge's gateway address.
                crate::dns::spawn(
                    client.clone(),
                    crate::dns::DnsOptions::for_node(&opts, &shared),
                );
                let server = crate::server::serve(endpoint, &tls, shared.clone());
                tokio::select! {
                    _ = crate::pods::run(shared) => {}
                    r = server => if let Err(e) = r {
                        tracing::error!("{e}");
                        std::future::pending::<()>().await
                    },
                }
            }
            Err(e) => {
                tracing::error!("cannot run pods on this node: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = pods => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    heartbeat.abort();
    tracing::info!("agent stopping");
    Ok(())
}

/// `ferry agent --cleanup`: removes everything this agent made on the node: its containers
/// (stopped and deleted) and their cgroups, the pods' root filesystems, volumes and
/// directories, the pods' network namespaces, veths and addresses, and the bridge. The Node
/// object stays (delete it with `ferry delete node`). Safe to run twice.
pub async fn cleanup(opts: &AgentOptions) -> Result<(), AgentError> {
    use crate::runtime::ContainerRuntime as _;
    let cfg = |e: String| AgentError::Config(e);
    let mut problems = Vec::new();
    let runtime_dir = opts.data_dir.join("runtime");
    if runtime_dir.exists() {
        let runtime = crate::runtime::Runc::new(crate::runtime::RuncOptions::new(
            runtime_dir,
            &opts.node_name,
        ))
        .map_err(|e| cfg(format!("container runtime: {e}")))?;
        let list = runtime.list("").map_err(|e| cfg(e.to_string()))?;
        for c in list {
            if let Err(e) = runtime.delete(&c.id) {
                problems.push(format!("container {}: {e}", c.id));
            }
        }
        for dir in runtime.remove_cgroup_parent() {
            problems.push(format!("cgroup {} is still in use", dir.display()));
        }
    }
    let pods_dir = opts.data_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods_dir) {
        for e in entries.flatten() {
            let dir = e.path();
            if let Err(err) = crate::pods::volumes::unmount_all(&dir.join("volumes")) {
                problems.push(format!("{}: {err}", dir.display()));
            }
            if let Ok(cs) = std::fs::read_dir(dir.join("containers")) {
                for c in cs.flatten() {
                    if let Err(err) = crate::pods::rootfs::remove(&c.path()) {
                        problems.push(format!("{}: {err}", c.path().display()));
                    }
                }
            }
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                problems.push(format!("{}: {err}", dir.display()));
            }
        }
    }
    let tokens_dir = opts.data_dir.join(crate::pods::volumes::TOKEN_STORE);
    if crate::pods::volumes::is_mountpoint(&tokens_dir)
        && let Err(err) = nix::mount::umount2(&tokens_dir, nix::mount::MntFlags::MNT_DETACH)
    {
        problems.push(format!("{}: {err}", tokens_dir.display()));
    }
    match std::fs::remove_dir_all(&tokens_dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            problems.push(format!("{}: {err}", tokens_dir.display()));
        }
        _ => {}
    }
    let ipam_path = opts.data_dir.join("network/ipam.json");
    let cidr = std::fs::read(&ipam_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["cidr"].as_str().and_then(|c| c.parse().ok()));
    if let Some(cidr) = cidr {
        let mut net_opts = crate::network::PodNetworkOptions::new(cidr, &opts.data_dir);
        net_opts.bridge = opts.pod_bridge.clone();
        let net = crate::network::PodNetwork::new(net_opts)
            .await
            .map_err(|e| cfg(format!("pod network: {e}")))?;
        let pods: Vec<_> = net
            .ipam_state()
            .allocations()
            .map(|(_, k)| k.clone())
            .collect();
        for p in pods {
            if let Err(e) = net.teardown(&p).await {
                problems.push(format!("pod network of {p}: {e}"));
            }
        }
    }
    // The bridge goes even when no pod ever got an address (no IPAM state to open a
    // PodNetwork with).
    let bridge = opts.pod_bridge.clone();
    let removed = match crate::network::NetnsHandle::current() {
        Ok(ns) => {
            crate::network::netns::with_netlink_in(
                &ns,
                "deleting the bridge",
                move |h| async move { crate::network::link::delete_link(&h, &bridge).await },
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        problems.push(format!("bridge {}: {e}", opts.pod_bridge));
    }
    if let Err(e) = crate::datapath::socklb::remove(&pin_dir(opts)) {
        problems.push(format!("pinned BPF objects: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(cfg(format!("cleanup left: {}", problems.join("; "))))
    }
}
