//! Socket-level service load balancing: loads the cgroup sock_addr programs (connect4,
//! sendmsg4, recvmsg4, getpeername4), attaches them to a cgroup-v2 directory, and keeps the
//! service maps equal to what [`super::services::desired`] computes.
//!
//! Everything lives under a pin directory (`/sys/fs/bpf/ferry/<node>/` by default): the maps,
//! and the links that keep the programs attached. A restarted agent reopens the pinned maps
//! (their content stays, so connections keep being balanced while it is down), attaches fresh
//! programs beside the old ones, and only then detaches the old ones: no gap.
//!
//! Map writes are ordered so a concurrent connect always sees a usable entry: new backends
//! first, then the backend slots and the Maglev table, then the master entry with the new
//! counts, then stale slots, tables, frontends and backends are deleted.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink, links::PinnedLink, tc::TcAttachOptions, xdp::XdpLink,
    },
};
use ferry_ebpf_common::{
    AFFINITY4_MAP, BACKENDS4_MAP, Backend4, L2_ANNOUNCE4_MAP, L2Announce, MAGLEV4_MAP,
    Maglev4Value, NAT4_MAP, NODE_CONFIG_MAP, NODE_IPS4_MAP, NS_STATS_MAP, NatKey, NatValue,
    NodeConfig, NsStat, PEER_IPS4_MAP, PROG_CONNECT4, PROG_FROM_UPLINK, PROG_GETPEERNAME4,
    PROG_RECVMSG4, PROG_SENDMSG4, PROG_TO_UPLINK, PROG_XDP_UPLINK, SOCK_REVNAT4_MAP,
    SOCK_STATS_MAP, SVC_STATS_MAP, SVC4_MAP, SockStat, Svc4Key, Svc4Value, SvcStats, svc_flags,
    svc_scope,
};

use super::{
    DatapathError, maglev,
    services::{BackendAddr, Entry, Frontend},
};

const PINNED_MAPS: [&str; 13] = [
    PEER_IPS4_MAP,
    SVC4_MAP,
    L2_ANNOUNCE4_MAP,
    SVC_STATS_MAP,
    MAGLEV4_MAP,
    BACKENDS4_MAP,
    SOCK_REVNAT4_MAP,
    AFFINITY4_MAP,
    NODE_IPS4_MAP,
    SOCK_STATS_MAP,
    NAT4_MAP,
    NODE_CONFIG_MAP,
    NS_STATS_MAP,
];
const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (PROG_FROM_UPLINK, TcAttachType::Ingress),
    (PROG_TO_UPLINK, TcAttachType::Egress),
];

/// Where north-south traffic (NodePort and LoadBalancer from outside) is translated.
#[derive(Clone, Debug)]
pub struct Uplink {
    /// The interface holding the node's address.
    pub ifname: String,
    pub node_ip: Ipv4Addr,
    /// This node's pod CIDR (backends inside it are local).
    pub pod_net: Ipv4Addr,
    pub pod_prefix: u8,
    /// Whether the XDP fast path runs in front of the TC programs.
    pub acceleration: Acceleration,
    /// The cluster's pod network: this node's pods' traffic to anywhere outside it is
    /// masqueraded to `node_ip` (`None`: never).
    pub masquerade: Option<(Ipv4Addr, u8)>,
}

/// The XDP fast path for north-south traffic (`--lb-acceleration`, as Cilium's
/// `loadBalancer.acceleration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acceleration {
    /// TC only.
    #[default]
    Disabled,
    /// XDP in the driver; the agent fails to start if the uplink's driver cannot run it.
    Native,
    /// XDP in the driver where it can run; TC only (with a warning) where it cannot.
    BestEffort,
}

impl std::str::FromStr for Acceleration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(Self::Disabled),
            "native" => Ok(Self::Native),
            "best-effort" => Ok(Self::BestEffort),
            other => Err(format!(
                "{other:?}: must be disabled, native or best-effort"
            )),
        }
    }
}

/// Maps whose layout changed between agent versions, with their key and value sizes and entry
/// counts now: a
/// pinned copy of another layout is removed before loading (its entries are lost; a program
/// would misread them), with a warning.
const CHECKED_LAYOUTS: [(&str, usize, usize, u32); 3] = [
    (
        NAT4_MAP,
        std::mem::size_of::<NatKey>(),
        std::mem::size_of::<NatValue>(),
        ferry_ebpf_common::NAT4_MAX_ENTRIES,
    ),
    (
        NS_STATS_MAP,
        std::mem::size_of::<u32>(),
        std::mem::size_of::<u64>(),
        NsStat::COUNT,
    ),
    (
        NODE_CONFIG_MAP,
        std::mem::size_of::<u32>(),
        std::mem::size_of::<NodeConfig>(),
        1,
    ),
];

fn drop_incompatible_pins(pin_dir: &Path) {
    for (name, key, value, entries) in CHECKED_LAYOUTS {
        let path = pin_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        if info.key_size() as usize != key
            || info.value_size() as usize != value
            || info.max_entries() != entries
        {
            tracing::warn!(
                map = name,
                "the pinned map has an older layout; replacing it (its entries start over)"
            );
            let _ = fs::remove_file(&path);
        }
    }
}

/// Attaches the XDP fast path to `ifname` in driver mode and pins its link. A previous agent's
/// pinned link is kept and switched to the new program in one step (an interface holds one XDP
/// link, so the TC way of attaching beside it cannot work here).
fn attach_xdp(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str) -> Result<(), DatapathError> {
    let name = PROG_XDP_UPLINK;
    let prog: &mut Xdp = program(ebpf, name)?;
    prog.load()
        .map_err(|e| DatapathError::program(name, "load", e))?;
    let path = pin_dir.join("links").join(name);
    let previous = PinnedLink::from_pin(&path)
        .ok()
        .and_then(|l| l.unpin().ok())
        .and_then(|fd| XdpLink::try_from(fd).ok());
    let id = match previous.map(|link| prog.attach_to_link(link)) {
        Some(Ok(id)) => id,
        // No previous link, or it could not take the new program (it is gone now).
        _ => prog.attach(ifname, XdpMode::Driver).map_err(|e| {
            DatapathError::program(name, "attach to the uplink (XDP, driver mode)", e)
        })?,
    };
    let link: FdLink = prog
        .take_link(id)
        .map_err(|e| DatapathError::program(name, "take link", e))?
        .try_into()
        .map_err(|_| DatapathError::MissingProgram { program: name })?;
    link.pin(&path)
        .map(drop)
        .map_err(|e| DatapathError::pin(name, &path, e.to_string()))
}

/// Program `name` of the object, as its type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { program: name })?
        .try_into()
        .map_err(|e| DatapathError::program(name, "type", e))
}

/// Makes address set `map` (`name`) hold exactly `ips`.
fn set_addresses(
    map: &mut HashMap<MapData, u32, u32>,
    name: &'static str,
    ips: &[Ipv4Addr],
) -> Result<(), DatapathError> {
    let want: BTreeSet<u32> = ips.iter().map(|ip| be(*ip)).collect();
    let have: BTreeSet<u32> = map.keys().flatten().collect();
    for ip in want.difference(&have) {
        map.insert(ip, 1, 0)
            .map_err(|e| DatapathError::map(name, "insert", e))?;
    }
    for ip in have.difference(&want) {
        let _ = map.remove(ip);
    }
    Ok(())
}

/// Detaches the program whose link is pinned at `links/<name>`, if any.
fn detach_pinned(pin_dir: &Path, name: &str) {
    if let Ok(link) = PinnedLink::from_pin(pin_dir.join("links").join(name))
        && let Ok(fd) = link.unpin()
    {
        drop(fd);
    }
}

/// Pins `link` at `links/<name>` in `pin_dir`, replacing (and so detaching) a previous agent's
/// link of that name only once the new one is in place.
fn pin_replacing(pin_dir: &Path, name: &'static str, link: FdLink) -> Result<(), DatapathError> {
    let final_path = pin_dir.join("links").join(name);
    // bpffs allows no `.` in names.
    let new_path = pin_dir.join("links").join(format!("{name}_new"));
    let _ = fs::remove_file(&new_path);
    link.pin(&new_path)
        .map_err(|e| DatapathError::pin(name, &new_path, e.to_string()))?;
    if let Ok(old) = PinnedLink::from_pin(&final_path)
        && let Ok(fd) = old.unpin()
    {
        drop(fd);
    }
    fs::rename(&new_path, &final_path)
        .map_err(|e| DatapathError::io("renaming pinned link", &new_path, e))
}
const PROGRAMS: [&str; 4] = [
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_GETPEERNAME4,
];

/// Where the cgroup-v2 hierarchy is mounted: `/sys/fs/cgroup/unified` on hybrid machines,
/// `/sys/fs/cgroup` on pure v2 ones.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next() == Some("cgroup2"))
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Mounts bpffs at /sys/fs/bpf unless it is there.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    let path = Path::new("/sys/fs/bpf");
    let is_bpffs = nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if is_bpffs {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|e| DatapathError::io("creating", path, e))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| DatapathError::io("mounting bpffs at", path, e.into()))
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// What is installed for one frontend.
#[derive(Clone, Debug, Default)]
struct Installed {
    rev_nat_id: u16,
    slots: u16,
}

/// The loaded, attached socket load balancer of this node.
pub struct SockLb {
    _ebpf: Ebpf,
    pin_dir: PathBuf,
    svc: HashMap<MapData, Svc4Key, Svc4Value>,
    backends: HashMap<MapData, u32, Backend4>,
    node_ips: HashMap<MapData, u32, u32>,
    /// Every node's address (never masqueraded to).
    peer_ips: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
    maglev: HashMap<MapData, Svc4Key, Maglev4Value>,
    svc_stats: PerCpuHashMap<MapData, u32, SvcStats>,
    l2: HashMap<MapData, u32, L2Announce>,
    /// North-south flows' translations (swept by [`SockLb::sweep_conntrack`]).
    nat: HashMap<MapData, NatKey, NatValue>,
    installed: BTreeMap<Frontend, Installed>,
    /// The Maglev tables in the map, as backend ids per slot.
    tables: BTreeMap<Frontend, Vec<u32>>,
    backend_ids: BTreeMap<BackendAddr, u32>,
    next_backend: u32,
    next_rev_nat: u16,
}

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    pub deletes: usize,
}

impl SockLb {
    /// Loads the programs with their maps pinned in `pin_dir` (reusing maps pinned there) and
    /// attaches them to the cgroup-v2 directory `cgroup`.
    pub fn load(
        pin_dir: &Path,
        cgroup: &Path,
        uplink: Option<&Uplink>,
    ) -> Result<Self, DatapathError> {
        ensure_bpffs()?;
        fs::create_dir_all(pin_dir.join("links"))
            .map_err(|e| DatapathError::io("creating", pin_dir, e))?;
        drop_incompatible_pins(pin_dir);
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> =
            PINNED_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(super::object()?)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let cgroup_dir =
            fs::File::open(cgroup).map_err(|e| DatapathError::io("opening cgroup", cgroup, e))?;
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| DatapathError::program(name, "load", e))?;
            // A BPF link: always one of several on the cgroup (link_create takes no flags).
            let id = prog
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|e| DatapathError::program(name, "attach to the cgroup", e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| DatapathError::program(name, "take link", e))?
                .try_into()
                .map_err(|_| DatapathError::MissingProgram { program: name })?;
            pin_replacing(pin_dir, name, link)?;
        }
        if let Some(up) = uplink {
            let map = ebpf
                .take_map(NODE_CONFIG_MAP)
                .ok_or(DatapathError::MissingMap {
                    map: NODE_CONFIG_MAP,
                })?;
            let mut config: Array<MapData, NodeConfig> =
                Array::try_from(map).map_err(|e| DatapathError::map(NODE_CONFIG_MAP, "open", e))?;
            let mask = match up.pod_prefix {
                0 => 0,
                p => u32::MAX << (32 - u32::from(p.min(32))),
            };
            let (cluster_net, cluster_mask) = match up.masquerade {
                Some((net, prefix)) => {
                    let m = match prefix {
                        0 => 0,
                        p => u32::MAX << (32 - u32::from(p.min(32))),
                    };
                    ((u32::from(net) & m).to_be(), m.to_be())
                }
                None => (0, 0),
            };
            let cfg = NodeConfig {
                node_ip: be(up.node_ip),
                pod_net: (u32::from(up.pod_net) & mask).to_be(),
                pod_mask: mask.to_be(),
                ready: 1,
                cluster_net,
                cluster_mask,
                masquerade: u32::from(up.masquerade.is_some()),
            };
            config
                .set(0, cfg, 0)
                .map_err(|e| DatapathError::map(NODE_CONFIG_MAP, "write", e))?;
            for (name, direction) in TC_PROGRAMS {
                let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
                prog.load()
                    .map_err(|e| DatapathError::program(name, "load", e))?;
                let id = prog
                    .attach_with_options(
                        &up.ifname,
                        direction,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| DatapathError::program(name, "attach to the uplink (TCX)", e))?;
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(|e| DatapathError::program(name, "take link", e))?
                    .try_into()
                    .map_err(|_| DatapathError::MissingProgram { program: name })?;
                pin_replacing(pin_dir, name, link)?;
            }
            match up.acceleration {
                Acceleration::Disabled => detach_pinned(pin_dir, PROG_XDP_UPLINK),
                Acceleration::Native => attach_xdp(&mut ebpf, pin_dir, &up.ifname)?,
                Acceleration::BestEffort => {
                    if let Err(e) = attach_xdp(&mut ebpf, pin_dir, &up.ifname) {
                        tracing::warn!(uplink = %up.ifname, error = %e, "no XDP fast path on the uplink: north-south traffic is translated at TC only");
                        detach_pinned(pin_dir, PROG_XDP_UPLINK);
                    }
                }
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(DatapathError::MissingMap { map: name })
        };
        let svc = HashMap::try_from(take(&mut ebpf, SVC4_MAP)?)
            .map_err(|e| DatapathError::map(SVC4_MAP, "open", e))?;
        let backends = HashMap::try_from(take(&mut ebpf, BACKENDS4_MAP)?)
            .map_err(|e| DatapathError::map(BACKENDS4_MAP, "open", e))?;
        let peer_ips = HashMap::try_from(take(&mut ebpf, PEER_IPS4_MAP)?)
            .map_err(|e| DatapathError::map(PEER_IPS4_MAP, "open", e))?;
        let node_ips = HashMap::try_from(take(&mut ebpf, NODE_IPS4_MAP)?)
            .map_err(|e| DatapathError::map(NODE_IPS4_MAP, "open", e))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, SOCK_STATS_MAP)?)
            .map_err(|e| DatapathError::map(SOCK_STATS_MAP, "open", e))?;
        let maglev = HashMap::try_from(take(&mut ebpf, MAGLEV4_MAP)?)
            .map_err(|e| DatapathError::map(MAGLEV4_MAP, "open", e))?;
        let svc_stats = PerCpuHashMap::try_from(take(&mut ebpf, SVC_STATS_MAP)?)
            .map_err(|e| DatapathError::map(SVC_STATS_MAP, "open", e))?;
        let l2 = HashMap::try_from(take(&mut ebpf, L2_ANNOUNCE4_MAP)?)
            .map_err(|e| DatapathError::map(L2_ANNOUNCE4_MAP, "open", e))?;
        let nat = HashMap::try_from(take(&mut ebpf, NAT4_MAP)?)
            .map_err(|e| DatapathError::map(NAT4_MAP, "open", e))?;
        let mut lb = SockLb {
            _ebpf: ebpf,
            pin_dir: pin_dir.to_path_buf(),
            svc,
            backends,
            node_ips,
            peer_ips,
            stats,
            maglev,
            svc_stats,
            l2,
            nat,
            installed: BTreeMap::new(),
            tables: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            next_backend: 1,
            next_rev_nat: 1,
        };
        lb.recover();
        Ok(lb)
    }

    /// The connection-tracking sweep ([`super::conntrack`]): removes north-south translations
    /// idle past their timeout and those whose backend is no longer behind any frontend. Call
    /// it after a [`SockLb::sync`], which decides what the backends are.
    pub fn sweep_conntrack(
        &mut self,
        timeouts: &super::conntrack::Timeouts,
    ) -> super::conntrack::SweepReport {
        let live: std::collections::HashSet<(Ipv4Addr, u16)> =
            self.backend_ids.keys().map(|b| (b.addr, b.port)).collect();
        super::conntrack::sweep(
            &mut self.nat,
            &live,
            super::conntrack::monotonic_now(),
            timeouts,
        )
    }

    /// Rebuilds the bookkeeping from pinned maps a previous agent filled.
    fn recover(&mut self) {
        for (id, b) in self.backends.iter().flatten() {
            self.backend_ids.insert(
                BackendAddr {
                    addr: from_be(b.addr),
                    port: u16::from_be(b.port),
                    proto: b.proto,
                },
                id,
            );
            self.next_backend = self.next_backend.max(id.wrapping_add(1));
        }
        for (k, v) in self.svc.iter().flatten() {
            if k.slot != 0 {
                continue;
            }
            let f = Self::frontend(&k);
            self.installed.insert(
                f,
                Installed {
                    rev_nat_id: v.rev_nat_id,
                    slots: v.count + v.fb_count,
                },
            );
            self.next_rev_nat = self.next_rev_nat.max(v.rev_nat_id.wrapping_add(1));
        }
        for (k, t) in self.maglev.iter().flatten() {
            self.tables.insert(Self::frontend(&k), t.backends.to_vec());
        }
    }

    fn frontend(k: &Svc4Key) -> Frontend {
        Frontend {
            addr: from_be(k.addr),
            port: u16::from_be(k.port),
            proto: k.proto,
            scope: k.scope,
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// This node's own addresses: NodePort frontends answer on them (and on loopback).
    pub fn set_node_ips(&mut self, ips: &[Ipv4Addr]) -> Result<(), DatapathError> {
        set_addresses(&mut self.node_ips, NODE_IPS4_MAP, ips)
    }

    /// Every node's address, which pods' traffic is never masqueraded to.
    pub fn set_peer_ips(&mut self, ips: &[Ipv4Addr]) -> Result<(), DatapathError> {
        set_addresses(&mut self.peer_ips, PEER_IPS4_MAP, ips)
    }

    fn key(f: &Frontend, slot: u16) -> Svc4Key {
        Svc4Key {
            addr: be(f.addr),
            port: f.port.to_be(),
            slot,
            proto: f.proto,
            scope: f.scope,
            _pad: [0; 2],
        }
    }

    fn backend_id(
        &mut self,
        b: &BackendAddr,
        report: &mut SyncReport,
    ) -> Result<u32, DatapathError> {
        if let Some(id) = self.backend_ids.get(b) {
            return Ok(*id);
        }
        let id = self.next_backend.max(1);
        self.next_backend = id.wrapping_add(1).max(1);
        let v = Backend4 {
            addr: be(b.addr),
            port: b.port.to_be(),
            proto: b.proto,
            state: 0,
        };
        self.backends
            .insert(id, v, 0)
            .map_err(|e| DatapathError::map(BACKENDS4_MAP, "insert", e))?;
        report.writes += 1;
        self.backend_ids.insert(*b, id);
        Ok(id)
    }

    /// Makes the maps hold exactly `desired`.
    pub fn sync(
        &mut self,
        desired: &BTreeMap<Frontend, Entry>,
    ) -> Result<SyncReport, DatapathError> {
        let mut report = SyncReport {
            frontends: desired.len(),
            ..Default::default()
        };
        // External-scope entries first: an internal master announces its external twin
        // (`HAS_EXTERNAL`) only once the twin exists, so outside traffic never finds the flag
        // without the entry. (Removal is the other way round: the flag goes in this loop, the
        // twin after it.)
        let ordered = desired
            .iter()
            .filter(|(f, _)| f.scope == svc_scope::EXTERNAL)
            .chain(
                desired
                    .iter()
                    .filter(|(f, _)| f.scope != svc_scope::EXTERNAL),
            );
        for (f, e) in ordered {
            let mut ids = Vec::with_capacity(e.ready.len() + e.terminating.len());
            for b in e.ready.iter().chain(&e.terminating) {
                ids.push(self.backend_id(b, &mut report)?);
            }
            let count = e.ready.len().min(u16::MAX as usize / 2) as u16;
            let fb = e.terminating.len().min(u16::MAX as usize / 2) as u16;
            let prev = self.installed.get(f).cloned();
            let rev_nat_id = match &prev {
                Some(p) => p.rev_nat_id,
                None => {
                    let id = self.next_rev_nat.max(1);
                    self.next_rev_nat = id.wrapping_add(1).max(1);
                    id
                }
            };
            for (i, id) in ids.iter().take(usize::from(count + fb)).enumerate() {
                let key = Self::key(f, i as u16 + 1);
                let want = Svc4Value {
                    backend_id: *id,
                    ..Default::default()
                };
                if self.svc.get(&key, 0).ok() != Some(want) {
                    self.svc
                        .insert(key, want, 0)
                        .map_err(|e| DatapathError::map(SVC4_MAP, "insert slot", e))?;
                    report.writes += 1;
                }
            }
            let has_external = f.scope == svc_scope::INTERNAL
                && desired.contains_key(&Frontend {
                    scope: svc_scope::EXTERNAL,
                    ..*f
                });
            let mut flags = 0;
            if e.affinity_s.is_some() {
                flags |= svc_flags::AFFINITY;
            }
            if has_external {
                flags |= svc_flags::HAS_EXTERNAL;
            }
            // The backends new flows use: ready ones, else serving-terminating ones.
            let in_use = if e.ready.is_empty() {
                &e.terminating
            } else {
                &e.ready
            };
            if e.maglev && !in_use.is_empty() {
                let (sorted, slots) = maglev::table(in_use);
                let ids: Vec<u32> = slots
                    .iter()
                    .map(|&i| self.backend_ids.get(&sorted[i]).copied().unwrap_or(0))
                    .collect();
                if self.tables.get(f) != Some(&ids) {
                    let mut value = Maglev4Value {
                        backends: [0; maglev::TABLE_SIZE],
                    };
                    value.backends.copy_from_slice(&ids);
                    self.maglev
                        .insert(Self::key(f, 0), value, 0)
                        .map_err(|e| DatapathError::map(MAGLEV4_MAP, "insert", e))?;
                    report.writes += 1;
                    self.tables.insert(*f, ids);
                }
                flags |= svc_flags::MAGLEV;
            }
            let master = Svc4Value {
                backend_id: 0,
                count,
                fb_count: fb,
                rev_nat_id,
                flags,
                affinity_s: e.affinity_s.unwrap_or(0),
            };
            let key = Self::key(f, 0);
            if self.svc.get(&key, 0).ok() != Some(master) {
                self.svc
                    .insert(key, master, 0)
                    .map_err(|e| DatapathError::map(SVC4_MAP, "insert frontend", e))?;
                report.writes += 1;
            }
            if flags & svc_flags::MAGLEV == 0 && self.tables.remove(f).is_some() {
                let _ = self.maglev.remove(&Self::key(f, 0));
                report.deletes += 1;
            }
            let old_slots = prev.map_or(0, |p| p.slots);
            for slot in (count + fb + 1)..=old_slots {
                let _ = self.svc.remove(&Self::key(f, slot));
                report.deletes += 1;
            }
            self.installed.insert(
                *f,
                Installed {
                    rev_nat_id,
                    slots: count + fb,
                },
            );
        }
        let gone: Vec<Frontend> = self
            .installed
            .keys()
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();
        for f in gone {
            let inst = self.installed.remove(&f).unwrap_or_default();
            let _ = self.svc.remove(&Self::key(&f, 0));
            let _ = self.svc_stats.remove(&u32::from(inst.rev_nat_id));
            if self.tables.remove(&f).is_some() {
                let _ = self.maglev.remove(&Self::key(&f, 0));
                report.deletes += 1;
            }
            for slot in 1..=inst.slots {
                let _ = self.svc.remove(&Self::key(&f, slot));
            }
            report.deletes += 1 + usize::from(inst.slots);
        }
        let used: BTreeSet<BackendAddr> = desired
            .values()
            .flat_map(|e| e.ready.iter().chain(&e.terminating))
            .copied()
            .collect();
        let stale: Vec<(BackendAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(b, _)| !used.contains(b))
            .map(|(b, id)| (*b, *id))
            .collect();
        for (b, id) in stale {
            let _ = self.backends.remove(&id);
            self.backend_ids.remove(&b);
            report.deletes += 1;
        }
        report.backends = self.backend_ids.len();
        Ok(report)
    }

    /// Makes this node answer ARP for exactly `addrs` on its uplink, with `mac`; returns the
    /// addresses added and removed.
    pub fn set_l2_announcements(
        &mut self,
        addrs: &BTreeSet<Ipv4Addr>,
        mac: [u8; 6],
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Addr>), DatapathError> {
        let want = L2Announce { mac, _pad: [0; 2] };
        let have: BTreeMap<u32, L2Announce> = self.l2.iter().flatten().collect();
        let mut added = Vec::new();
        for a in addrs {
            if have.get(&be(*a)) != Some(&want) {
                self.l2
                    .insert(be(*a), want, 0)
                    .map_err(|e| DatapathError::map(L2_ANNOUNCE4_MAP, "insert", e))?;
                added.push(*a);
            }
        }
        let mut removed = Vec::new();
        for k in have.keys() {
            if !addrs.contains(&from_be(*k)) {
                let _ = self.l2.remove(k);
                removed.push(from_be(*k));
            }
        }
        Ok((added, removed))
    }

    /// What the maps hold (see [`Dump`]).
    pub fn dump(&self) -> Dump {
        read_maps(
            &self.svc,
            &self.backends,
            &self.stats,
            Some(&self.svc_stats),
        )
    }
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedFrontend {
    pub frontend: Frontend,
    /// Ready backends (the first `ready` of `backends`); the rest are serving-terminating.
    pub ready: u16,
    pub backends: Vec<BackendAddr>,
    pub affinity_s: Option<u32>,
    /// Outside traffic picks its backend from a Maglev table.
    pub maglev: bool,
    /// What the frontend carried on this node, summed over CPUs.
    pub counters: SvcStats,
}

/// The service maps of a node and the socket programs' counters (summed over CPUs).
#[derive(Clone, Debug, Default)]
pub struct Dump {
    pub frontends: Vec<DumpedFrontend>,
    pub stats: BTreeMap<&'static str, u64>,
}

fn read_maps(
    svc: &HashMap<MapData, Svc4Key, Svc4Value>,
    backends: &HashMap<MapData, u32, Backend4>,
    stats: &PerCpuArray<MapData, u64>,
    svc_stats: Option<&PerCpuHashMap<MapData, u32, SvcStats>>,
) -> Dump {
    let by_id: BTreeMap<u32, BackendAddr> = backends
        .iter()
        .flatten()
        .map(|(id, b)| {
            (
                id,
                BackendAddr {
                    addr: from_be(b.addr),
                    port: u16::from_be(b.port),
                    proto: b.proto,
                },
            )
        })
        .collect();
    let mut frontends = Vec::new();
    for (k, v) in svc.iter().flatten() {
        if k.slot != 0 {
            continue;
        }
        let f = SockLb::frontend(&k);
        let backends = (1..=v.count + v.fb_count)
            .filter_map(|slot| svc.get(&SockLb::key(&f, slot), 0).ok())
            .filter_map(|s| by_id.get(&s.backend_id).copied())
            .collect();
        frontends.push(DumpedFrontend {
            frontend: f,
            ready: v.count,
            backends,
            affinity_s: (v.flags & svc_flags::AFFINITY != 0).then_some(v.affinity_s),
            maglev: v.flags & svc_flags::MAGLEV != 0,
            counters: svc_stats
                .and_then(|m| m.get(&u32::from(v.rev_nat_id), 0).ok())
                .map(|per_cpu| {
                    per_cpu.iter().fold(SvcStats::default(), |a, c| SvcStats {
                        flows: a.flows + c.flows,
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    })
                })
                .unwrap_or_default(),
        });
    }
    frontends.sort_by_key(|f| f.frontend);
    let mut totals = BTreeMap::new();
    for s in SockStat::ALL {
        let total = stats
            .get(&(s as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        totals.insert(
            match s {
                SockStat::Translated => "translated",
                SockStat::NoBackend => "no_backend",
                SockStat::Reversed => "reversed",
                SockStat::AffinityHit => "affinity_hit",
            },
            total,
        );
    }
    Dump {
        frontends,
        stats: totals,
    }
}

/// A reader of one node's pinned service maps, opened once and looked up many times (the
/// propagation benchmark polls it).
pub struct PinnedView {
    svc: HashMap<MapData, Svc4Key, Svc4Value>,
    backends: HashMap<MapData, u32, Backend4>,
}

impl PinnedView {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        use aya::maps::Map;
        let open = |name: &'static str| -> Result<Map, DatapathError> {
            let data = MapData::from_pin(pin_dir.join(name))
                .map_err(|e| DatapathError::map(name, "open pinned", e))?;
            Map::from_map_data(data).map_err(|e| DatapathError::map(name, "open pinned", e))
        };
        Ok(PinnedView {
            svc: HashMap::try_from(open(SVC4_MAP)?)
                .map_err(|e| DatapathError::map(SVC4_MAP, "open", e))?,
            backends: HashMap::try_from(open(BACKENDS4_MAP)?)
                .map_err(|e| DatapathError::map(BACKENDS4_MAP, "open", e))?,
        })
    }

    /// The ready backends of `frontend` as the datapath sees them now (`None`: no such
    /// frontend).
    pub fn ready_backends(&self, frontend: &Frontend) -> Option<Vec<BackendAddr>> {
        let master = self.svc.get(&SockLb::key(frontend, 0), 0).ok()?;
        Some(
            (1..=master.count)
                .filter_map(|slot| self.svc.get(&SockLb::key(frontend, slot), 0).ok())
                .filter_map(|s| self.backends.get(&s.backend_id, 0).ok())
                .map(|b| BackendAddr {
                    addr: from_be(b.addr),
                    port: u16::from_be(b.port),
                    proto: b.proto,
                })
                .collect(),
        )
    }
}

/// What the maps pinned under `pin_dir` hold, read by any process (`ferry datapath services`),
/// the agent running or not.
pub fn dump_pinned(pin_dir: &Path) -> Result<Dump, DatapathError> {
    use aya::maps::Map;
    let open = |name: &'static str| -> Result<Map, DatapathError> {
        let path = pin_dir.join(name);
        let data =
            MapData::from_pin(&path).map_err(|e| DatapathError::map(name, "open pinned", e))?;
        Map::from_map_data(data).map_err(|e| DatapathError::map(name, "open pinned", e))
    };
    let svc =
        HashMap::try_from(open(SVC4_MAP)?).map_err(|e| DatapathError::map(SVC4_MAP, "open", e))?;
    let backends = HashMap::try_from(open(BACKENDS4_MAP)?)
        .map_err(|e| DatapathError::map(BACKENDS4_MAP, "open", e))?;
    let stats = PerCpuArray::try_from(open(SOCK_STATS_MAP)?)
        .map_err(|e| DatapathError::map(SOCK_STATS_MAP, "open", e))?;
    // Absent in pins made by agents older than the per-service counters.
    let svc_stats = open(SVC_STATS_MAP)
        .ok()
        .and_then(|m| PerCpuHashMap::try_from(m).ok());
    let mut dump = read_maps(&svc, &backends, &stats, svc_stats.as_ref());
    if let Ok(ns) = open(NS_STATS_MAP)
        && let Ok(ns) = PerCpuArray::<MapData, u64>::try_from(ns)
    {
        for st in NsStat::ALL {
            let total: u64 = ns
                .get(&(st as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            dump.stats.insert(
                match st {
                    NsStat::NewLocal => "ns_new_local",
                    NsStat::NewRemote => "ns_new_remote",
                    NsStat::Forward => "ns_forward",
                    NsStat::Reply => "ns_reply",
                    NsStat::NoBackend => "ns_no_backend",
                    NsStat::FibFailed => "ns_fib_failed",
                    NsStat::NatExhausted => "ns_nat_exhausted",
                    NsStat::XdpTx => "ns_xdp_tx",
                    NsStat::XdpDrop => "ns_xdp_drop",
                    NsStat::IcmpError => "ns_icmp_error",
                    NsStat::FragNeeded => "ns_frag_needed",
                    NsStat::Masquerade => "ns_masquerade",
                },
                total,
            );
        }
    }
    Ok(dump)
}

/// Detaches the programs and removes the maps pinned under `pin_dir` (`ferry agent --cleanup`).
pub fn remove(pin_dir: &Path) -> Result<(), DatapathError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for name in PROGRAMS
        .into_iter()
        .chain(TC_PROGRAMS.map(|(n, _)| n))
        .chain([PROG_XDP_UPLINK])
    {
        detach_pinned(pin_dir, name);
        let _ = fs::remove_file(pin_dir.join("links").join(format!("{name}_new")));
    }
    fs::remove_dir_all(pin_dir).map_err(|e| DatapathError::io("removing", pin_dir, e))
}
