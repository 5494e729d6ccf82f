//! Pod network of one node: a network namespace per pod joined to a node bridge by a veth pair,
//! an address from the node's pod CIDR, a default route, and the pod's `/etc` files.
//!
//! What it owns, on the node it runs on:
//! - the bridge (`ferry0` by default) holding the gateway address, the first address of the
//!   pod CIDR; the kernel derives the node's route to the pod CIDR from that address;
//! - per pod: the named network namespace (a bind mount under `/run/netns` by default, the
//!   same kind of file `ip netns add` makes), the veth pair (host end `<prefix><hash of the pod
//!   key>` on the bridge, pod end `eth0` inside), the address and default route inside, and a
//!   directory `<data dir>/network/pods/<namespace>_<name>_<uid>/` holding `hostname`, `hosts`
//!   and `resolv.conf` (for the runtime to bind-mount into containers) and the pod's network
//!   state;
//! - the IPAM state file `<data dir>/network/ipam.json` (see [`ipam`]).
//!
//! What it must never do:
//! - shell out (`ip`, `ip netns exec`): everything is netlink and plain syscalls, and
//!   namespaces are entered with `setns(2)` by dedicated threads ([`netns`]);
//! - hand out an address that may still be live: allocations are persisted before use, and a
//!   state file it cannot trust is an error, never a fresh start;
//! - touch links, namespaces or files it did not name itself (the bridge, links with its veth
//!   prefix, namespaces it created);
//! - change node-wide settings. Forwarding (`net.ipv4.ip_forward`), NAT for traffic leaving the
//!   node and routes to other nodes' pod CIDRs are not set by [`PodNetwork`]: forwarding and
//!   cross-node routing belong to [`routes`], NAT to a later slice. Pod-to-pod traffic on one
//!   node and pod-to-node traffic need none of them (the bridge switches it).
//!
//! Both [`PodNetwork::setup`] and [`PodNetwork::teardown`] are idempotent, so the pod sync loop
//! can call them whenever it is unsure: setup on a pod that is already set up keeps its address
//! and namespace and recreates its veth pair (briefly interrupting its traffic); teardown of a
//! pod that is gone, or half set up, removes whatever is left and succeeds.
//!
//! Name collisions: host veth names carry 32 bits of a hash of the pod key; two pods of one node
//! colliding is about a one-in-a-hundred-thousand event at 250 pods. A collision makes the
//! second pod's setup replace the first pod's veth, which the pod sync loop would see as a
//! broken pod; it is not detected here.

pub mod error;
pub mod etc;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod routes;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

pub use self::{
    error::NetworkError,
    etc::DnsConfig,
    ipam::{Ipam, IpamState, Ipv4Cidr, PodKey},
    netns::NetnsHandle,
};
use self::{error::Result, ipam::write_atomically};

/// Where named namespaces live by default, as for `ip netns`.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
pub const DEFAULT_BRIDGE: &str = "ferry0";
pub const DEFAULT_VETH_PREFIX: &str = "fveth";

/// Linux interface names have at most 15 bytes; 8 go to the hash.
const MAX_VETH_PREFIX: usize = 7;
const MAX_IFNAME: usize = 15;

/// How the node's pod network is laid out.
#[derive(Clone, Debug)]
pub struct PodNetworkOptions {
    /// The node's pod CIDR (the Node's `spec.podCIDR`).
    pub pod_cidr: Ipv4Cidr,
    /// The agent's data directory; this module keeps its state under `network/` in it.
    pub data_dir: PathBuf,
    pub bridge: String,
    /// Directory of the named network namespaces.
    pub netns_dir: PathBuf,
    /// Prefix of host-side veth names, at most 7 bytes.
    pub veth_prefix: String,
}

impl PodNetworkOptions {
    pub fn new(pod_cidr: Ipv4Cidr, data_dir: impl Into<PathBuf>) -> Self {
        PodNetworkOptions {
            pod_cidr,
            data_dir: data_dir.into(),
            bridge: DEFAULT_BRIDGE.into(),
            netns_dir: DEFAULT_NETNS_DIR.into(),
            veth_prefix: DEFAULT_VETH_PREFIX.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_ifname("bridge name", &self.bridge, MAX_IFNAME)?;
        validate_ifname("veth prefix", &self.veth_prefix, MAX_VETH_PREFIX)
    }
}

fn validate_ifname(what: &'static str, name: &str, max: usize) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > max {
        Some(if max == MAX_IFNAME {
            "longer than 15 bytes"
        } else {
            "longer than 7 bytes"
        })
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name == "."
        || name == ".."
    {
        Some("only letters, digits, `-`, `_` and `.` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetworkError::InvalidInput {
            what,
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What the pod sync loop asks for one pod.
#[derive(Clone, Debug)]
pub struct PodNetRequest {
    pub pod: PodKey,
    /// A namespace name (a file in the netns directory) or an absolute path to a namespace
    /// file. A name, or a path where no namespace exists yet, is created and owned by this
    /// module (removed at teardown); an existing namespace outside the netns directory is
    /// only used.
    pub netns: String,
    pub hostname: String,
    pub dns: DnsConfig,
}

/// The pod's network as set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetConfig {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// Host end of the veth pair, on the bridge.
    pub host_veth: String,
    /// MAC of the pod's `eth0`, `aa:bb:..` form.
    pub mac: String,
    pub netns_path: PathBuf,
    /// Holds `hostname`, `hosts`, `resolv.conf`.
    pub etc_dir: PathBuf,
}

/// What teardown needs to know, written before anything is created so a crash half-way
/// through setup still leaves enough to clean up.
#[derive(Serialize, Deserialize)]
struct PodState {
    netns_path: PathBuf,
    owns_netns: bool,
    host_veth: String,
}

/// The node's pod network. See the module docs.
pub struct PodNetwork {
    opts: PodNetworkOptions,
    /// The node's namespace: the one the constructing thread was in. Host-side work always
    /// happens there, whichever thread or namespace the caller is in later.
    node_ns: NetnsHandle,
    ipam: Arc<Mutex<Ipam>>,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("opts", &self.opts)
            .field("node_ns", &self.node_ns)
            .finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// Loads the IPAM state and makes sure the bridge exists with the gateway address. The
    /// calling thread's network namespace becomes the node namespace.
    pub async fn new(opts: PodNetworkOptions) -> Result<Self> {
        opts.validate()?;
        let ipam = Ipam::open(opts.data_dir.join("network/ipam.json"), opts.pod_cidr)?;
        let node_ns = NetnsHandle::current()?;
        let net = PodNetwork {
            opts,
            node_ns,
            ipam: Arc::new(Mutex::new(ipam)),
        };
        net.ensure_bridge().await?;
        Ok(net)
    }

    pub fn options(&self) -> &PodNetworkOptions {
        &self.opts
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.opts.pod_cidr.gateway()
    }

    /// A copy of the current allocations.
    pub fn ipam_state(&self) -> IpamState {
        self.lock_ipam().state().clone()
    }

    /// Host end of the pod's veth pair.
    pub fn host_veth_name(&self, pod: &PodKey) -> String {
        format!("{}{:08x}", self.opts.veth_prefix, pod.stable_hash())
    }

    /// The pod's directory (etc files and network state).
    pub fn pod_dir(&self, pod: &PodKey) -> PathBuf {
        self.opts
            .data_dir
            .join("network/pods")
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
    }

    fn lock_ipam(&self) -> MutexGuard<'_, Ipam> {
        // A panic while holding the lock cannot leave Ipam half-updated (it restores its state
        // on failed writes and does not panic), so a poisoned lock is still consistent.
        self.ipam.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ensure_bridge(&self) -> Result<u32> {
        let bridge = self.opts.bridge.clone();
        let (gateway, prefix) = (self.opts.pod_cidr.gateway(), self.opts.pod_cidr.prefix());
        netns::with_netlink_in(&self.node_ns, "ensuring the bridge", move |h| async move {
            link::ensure_bridge(&h, &bridge, gateway, prefix).await
        })
        .await
    }

    fn resolve_netns(&self, netns: &str) -> Result<PathBuf> {
        if netns.starts_with('/') {
            return Ok(PathBuf::from(netns));
        }
        let bad = netns.is_empty()
            || netns.len() > 255
            || netns == "."
            || netns == ".."
            || netns.contains('/')
            || netns.contains('\0');
        if bad {
            return Err(NetworkError::InvalidInput {
                what: "network namespace name",
                value: netns.to_owned(),
                reason: "must be a file name or an absolute path",
            });
        }
        Ok(self.opts.netns_dir.join(netns))
    }

    /// Gives the pod its network (see the module docs). On failure whatever was made for the
    /// pod is torn down again, so a failed setup holds no address.
    pub async fn setup(&self, req: &PodNetRequest) -> Result<PodNetConfig> {
        req.pod.validate()?;
        etc::validate_hostname(&req.hostname)?;
        etc::render_resolv_conf(&req.dns)?;
        let netns_path = self.resolve_netns(&req.netns)?;
        match self.try_setup(req, netns_path).await {
            Ok(cfg) => Ok(cfg),
            Err(e) => {
                if let Err(cleanup) = self.teardown(&req.pod).await {
                    tracing::warn!(pod = %req.pod, error = %cleanup, "cleaning up after a failed pod network setup");
                }
                Err(e)
            }
        }
    }

    async fn try_setup(&self, req: &PodNetRequest, netns_path: PathBuf) -> Result<PodNetConfig> {
        let pod = &req.pod;
        let ip = self.lock_ipam().allocate(pod)?;
        let cidr = self.opts.pod_cidr;
        let gateway = cidr.gateway();
        let host_veth = self.host_veth_name(pod);
        let pod_dir = self.pod_dir(pod);

        let owns_netns =
            netns_path.starts_with(&self.opts.netns_dir) || !netns::is_netns(&netns_path);
        let state = PodState {
            netns_path: netns_path.clone(),
            owns_netns,
            host_veth: host_veth.clone(),
        };
        let state_json =
            serde_json::to_vec_pretty(&state).map_err(|e| NetworkError::StateInvalid {
                path: pod_dir.join("network.json"),
                reason: e.to_string(),
            })?;
        write_atomically(&pod_dir.join("network.json"), &state_json)?;

        if owns_netns {
            if let Some(dir) = netns_path.parent() {
                netns::ensure_netns_dir(dir)?;
            }
            netns::create_netns(&netns_path)?;
        }
        let pod_ns = NetnsHandle::open(&netns_path)?;

        let bridge_index = self.ensure_bridge().await?;
        {
            let pod_ns = pod_ns.try_clone()?;
            let host_veth = host_veth.clone();
            netns::with_netlink_in(
                &self.node_ns,
                "creating the pod's veth pair",
                move |h| async move {
                    // A leftover pair from an earlier setup of this pod is replaced.
                    link::delete_link(&h, &host_veth).await?;
                    link::create_pod_veth(&h, &host_veth, bridge_index, &pod_ns, link::mac_for(ip))
                        .await
                },
            )
            .await?;
        }
        let mac =
            netns::with_netlink_in(&pod_ns, "configuring the pod's eth0", move |h| async move {
                link::configure_pod_side(&h, ip, cidr.prefix(), gateway).await
            })
            .await?;

        let etc_dir = pod_dir.join("etc");
        etc::write_pod_etc(&etc_dir, &req.hostname, ip, &req.dns)?;
        tracing::debug!(pod = %pod, %ip, %host_veth, netns = %netns_path.display(), "pod network set up");
        let cfg = PodNetConfig {
            ip,
            gateway,
            prefix: cidr.prefix(),
            host_veth,
            mac: link::format_mac(&mac),
            netns_path,
            etc_dir,
        };
        let cfg_json = serde_json::to_vec_pretty(&cfg).map_err(|e| NetworkError::StateInvalid {
            path: pod_dir.join("config.json"),
            reason: e.to_string(),
        })?;
        write_atomically(&pod_dir.join("config.json"), &cfg_json)?;
        Ok(cfg)
    }

    /// The pod's network if a setup completed earlier (also by an earlier agent process) and
    /// is still in place: its address is allocated to it and its namespace exists. The pod sync
    /// loop uses it instead of [`PodNetwork::setup`], which would recreate the veth pair.
    pub fn existing(&self, pod: &PodKey) -> Option<PodNetConfig> {
        let bytes = std::fs::read(self.pod_dir(pod).join("config.json")).ok()?;
        let cfg: PodNetConfig = serde_json::from_slice(&bytes).ok()?;
        let allocated = self.lock_ipam().get(pod) == Some(cfg.ip);
        (allocated && netns::is_netns(&cfg.netns_path)).then_some(cfg)
    }

    /// Removes the pod's veth pair, its namespace (if this module created it), its directory
    /// and its address. Succeeds if some or all of it is already gone.
    pub async fn teardown(&self, pod: &PodKey) -> Result<()> {
        pod.validate()?;
        let pod_dir = self.pod_dir(pod);
        let state_path = pod_dir.join("network.json");
        let state: Option<PodState> = match std::fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    // The veth name is derived and the address is in IPAM; only an owned
                    // namespace can be missed, and it dies with its last process anyway.
                    tracing::warn!(pod = %pod, path = %state_path.display(), error = %e, "unreadable pod network state");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(NetworkError::io("reading pod network state", state_path, e)),
        };
        let host_veth = state
            .as_ref()
            .map_or_else(|| self.host_veth_name(pod), |s| s.host_veth.clone());
        // Deleting the host end takes the pod end with it at once; deleting only the
        // namespace would leave that to the kernel's asynchronous namespace cleanup.
        {
            let host_veth = host_veth.clone();
            netns::with_netlink_in(
                &self.node_ns,
                "deleting the pod's veth pair",
                move |h| async move { link::delete_link(&h, &host_veth).await },
            )
            .await?;
        }
        if let Some(state) = &state
            && state.owns_netns
        {
            netns::remove_netns(&state.netns_path)?;
        }
        match std::fs::remove_dir_all(&pod_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetworkError::io("removing pod directory", pod_dir, e)),
        }
        self.lock_ipam().release(pod)?;
        tracing::debug!(pod = %pod, %host_veth, "pod network torn down");
        Ok(())
    }

    /// Deletes the bridge (node decommissioning and tests). Pods' veths on it are not touched.
    pub async fn remove_bridge(&self) -> Result<()> {
        let bridge = self.opts.bridge.clone();
        netns::with_netlink_in(&self.node_ns, "deleting the bridge", move |h| async move {
            link::delete_link(&h, &bridge).await.map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn names() {
        assert!(validate_ifname("bridge name", "ferry0", MAX_IFNAME).is_ok());
        assert!(validate_ifname("bridge name", "a-very-long-name", MAX_IFNAME).is_err());
        assert!(validate_ifname("veth prefix", "fveth", MAX_VETH_PREFIX).is_ok());
        assert!(validate_ifname("veth prefix", "toolongx", MAX_VETH_PREFIX).is_err());
        assert!(validate_ifname("bridge name", "a b", MAX_IFNAME).is_err());
        assert!(validate_ifname("bridge name", "", MAX_IFNAME).is_err());
        assert!(validate_ifname("bridge name", "a/b", MAX_IFNAME).is_err());
    }

    #[test]
    fn veth_names_fit_and_are_stable() {
        let c: Ipv4Cidr = "10.1.0.0/24".parse().unwrap();
        let mut opts = PodNetworkOptions::new(c, "/nonexistent");
        opts.veth_prefix = "abcdefg".into();
        let net = PodNetwork {
            opts,
            node_ns: NetnsHandle::current().unwrap(),
            ipam: Arc::new(Mutex::new(Ipam::open("/nonexistent/ipam.json", c).unwrap())),
        };
        let pod = PodKey::new("default", "web", "uid-1");
        let name = net.host_veth_name(&pod);
        assert_eq!(name.len(), MAX_IFNAME);
        assert_eq!(name, net.host_veth_name(&pod.clone()));
        assert!(name.starts_with("abcdefg"));
        assert_eq!(
            net.pod_dir(&pod),
            Path::new("/nonexistent/network/pods/default_web_uid-1")
        );
        assert!(net.resolve_netns("a/b").is_err());
        assert!(net.resolve_netns("..").is_err());
        assert_eq!(
            net.resolve_netns("pod1").unwrap(),
            Path::new("/run/netns/pod1")
        );
    }
}
