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

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Member addresses, comma-separated.
    pub server: String,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// Cross-node pod routing: direct routes or VXLAN (`network::routes`).
    pub tunnel: crate::network::routes::Tunnel,
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
    let node = match client.get("Node", "", name).await {
        Ok(n) => n,
        Err(e) if e.is_not_found() => {
            let body = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {
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

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    if let Some(e) = ferry_api::validation::dns1123_subdomain_error(&opts.node_name) {
        return Err(AgentError::Config(format!(
            "--node-name {:?}: {e}",
            opts.node_name
        )));
    }
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
    let mut node = loop {
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
    let mut pod_cidr = node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .map(String::from);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &opts.node_name).await {
                    tracing::warn!("renewing the node lease: {e}");
                }
                if pod_cidr.is_none() {
                    if let Ok(n) = client.get("Node", "", &opts.node_name).await {
                        node = n;
                    }
                    pod_cidr = node.pointer("/spec/podCIDR").and_then(Value::as_str).map(String::from);
                    if let Some(c) = &pod_cidr {
                        tracing::info!(pod_cidr = %c, "pod CIDR assigned");
                    }
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
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("agent stopping");
    Ok(())
}
