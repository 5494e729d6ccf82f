//! Routes to the other nodes' pod CIDRs, so that a pod reaches pods on other nodes.
//!
//! Every agent lists and watches the Nodes and, for every *other* node that has a
//! `spec.podCIDR` and an IPv4 `InternalIP`, keeps in its own network namespace:
//!
//! - with [`Tunnel::None`] (the default; all nodes on one L2 segment): a route
//!   `<podCIDR> via <node InternalIP>`;
//! - with [`Tunnel::Vxlan`]: one VXLAN device [`VXLAN_IFNAME`] (VNI [`VXLAN_VNI`], UDP port
//!   [`VXLAN_PORT`] as Flannel, `local` = this node's IP, no learning, MAC derived from the pod
//!   CIDR with [`vtep_mac`]) holding this node's *VTEP address*, the network address of its
//!   pod CIDR as a /32 (as Flannel does: the first address, the gateway, stays on the bridge);
//!   and per remote node a route `<podCIDR> via <remote VTEP address> dev ferry.vxlan onlink`,
//!   a permanent neighbour entry `<remote VTEP address> -> <remote VTEP MAC>` and an FDB entry
//!   `<remote VTEP MAC> -> dst <remote node IP>`. Both MACs are derived from pod CIDRs, so no
//!   node has to publish its MAC anywhere.
//!
//! Routes and entries of nodes that disappear or change are removed or replaced. The work is
//! level-triggered: [`topology`], [`desired`] and [`plan`] are pure (desired state from the
//! Node list, compared with what the kernel has), and a small executor applies the plan. It
//! runs at start, on every Node watch event and every [`RESYNC_EVERY`].
//!
//! What it owns: the routes in the main table whose protocol is [`RTPROT_FERRY`], the device
//! [`VXLAN_IFNAME`] with its addresses, neighbour and FDB entries, and `net.ipv4.ip_forward`
//! (set to 1 at start: pods' traffic to other nodes is forwarded by this node).
//!
//! What it must never do:
//! - touch a route it did not make: only routes with protocol [`RTPROT_FERRY`] are ever
//!   replaced or deleted, and a desired route whose destination is already taken by someone
//!   else's route (same prefix, same metric) is left out and reported instead;
//! - shell out: everything is netlink (rtnetlink) and `/proc/sys` writes;
//! - remove routes when the agent stops: routing keeps working while the agent restarts, and
//!   the next agent start reconciles whatever changed meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

use ferry_api::client::{Client, ListOptions, WatchEvent};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
        },
    },
};
use serde_json::Value;

use super::{
    error::{NetworkError, Result},
    ipam::Ipv4Cidr,
    link,
    netns::{self, NetnsHandle},
};

/// Route protocol number marking Ferry's routes (`ip route ... proto 70`). Unassigned in
/// `/etc/iproute2/rt_protos`; only routes with this protocol are ever changed or deleted.
pub const RTPROT_FERRY: u8 = 0x46;
pub const VXLAN_IFNAME: &str = "ferry.vxlan";
pub const VXLAN_VNI: u32 = 1;
/// Flannel's (and the Linux kernel's historical) VXLAN port, not IANA's 4789.
pub const VXLAN_PORT: u16 = 8472;
/// Full resync period, on top of the resync on every Node event.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Pause before listing again after the watch broke or the API was unreachable.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Watch events arriving within this window after the first one are folded into one resync.
const COALESCE: Duration = Duration::from_millis(50);
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// How pod traffic crosses to other nodes (`ferry agent --tunnel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tunnel {
    /// Plain routes via the other nodes' addresses: the nodes share one L2 segment.
    #[default]
    None,
    /// VXLAN encapsulation between the nodes' addresses: any IP connectivity will do.
    Vxlan,
}

impl fmt::Display for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tunnel::None => "none",
            Tunnel::Vxlan => "vxlan",
        })
    }
}

impl FromStr for Tunnel {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Tunnel::None),
            "vxlan" => Ok(Tunnel::Vxlan),
            other => Err(format!(
                "unknown tunnel mode {other:?} (expected none or vxlan)"
            )),
        }
    }
}

/// The MAC of a node's VXLAN device: locally administered, unicast, `0e:46:` and the network
/// address of the node's pod CIDR. Every node can compute every other node's.
pub fn vtep_mac(pod_cidr: Ipv4Cidr) -> [u8; 6] {
    let [a, b, c, d] = pod_cidr.network().octets();
    [0x0e, 0x46, a, b, c, d]
}

/// A node's VTEP address: the network address of its pod CIDR (held as a /32 on the VXLAN
/// device; never a pod's address, and the gateway stays on the bridge).
pub fn vtep_addr(pod_cidr: Ipv4Cidr) -> Ipv4Addr {
    pod_cidr.network()
}

// ---------------------------------------------------------------------------------------------
// Pure decisions.

/// Another node, as far as routing to it is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: Ipv4Cidr,
    pub node_ip: Ipv4Addr,
}

/// This node and the nodes it routes to, from the Node list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub own_cidr: Option<Ipv4Cidr>,
    /// This node's InternalIP as stored in its Node.
    pub own_ip: Option<Ipv4Addr>,
    /// Sorted by name.
    pub peers: Vec<Peer>,
    /// Nodes left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn pod_cidr_of(node: &Value) -> Option<std::result::Result<Ipv4Cidr, String>> {
    let s = node.pointer("/spec/podCIDR").and_then(Value::as_str)?;
    Some(
        s.parse::<Ipv4Cidr>()
            .map_err(|e| format!("unusable pod CIDR: {e}")),
    )
}

fn internal_ipv4_of(node: &Value) -> Option<Ipv4Addr> {
    node.pointer("/status/addresses")?
        .as_array()?
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(|a| a["address"].as_str()?.parse::<Ipv4Addr>().ok())
}

/// Splits the Node list into this node (`own_name`) and its routable peers. A peer needs a
/// valid pod CIDR and an IPv4 InternalIP; a peer whose pod CIDR overlaps this node's or an
/// earlier peer's (by name), or whose address is this node's or an earlier peer's, is skipped:
/// routing it would hijack someone else's traffic.
pub fn topology<'a>(own_name: &str, nodes: impl IntoIterator<Item = &'a Value>) -> Topology {
    let mut by_name: BTreeMap<&str, &Value> = BTreeMap::new();
    for n in nodes {
        if let Some(name) = n.pointer("/metadata/name").and_then(Value::as_str) {
            by_name.insert(name, n);
        }
    }
    let mut topo = Topology::default();
    if let Some(own) = by_name.get(own_name) {
        topo.own_cidr = pod_cidr_of(own).and_then(|r| r.ok());
        topo.own_ip = internal_ipv4_of(own);
    }
    for (name, node) in by_name {
        if name == own_name {
            continue;
        }
        let mut skip = |reason: String| topo.skipped.push((name.to_owned(), reason));
        let pod_cidr = match pod_cidr_of(node) {
            None => {
                skip("no pod CIDR yet".into());
                continue;
            }
            Some(Err(e)) => {
                skip(e);
                continue;
            }
            Some(Ok(c)) => c,
        };
        let Some(node_ip) = internal_ipv4_of(node) else {
            skip("no IPv4 InternalIP".into());
            continue;
        };
        if topo.own_cidr.is_some_and(|own| overlaps(own, pod_cidr)) {
            skip(format!("pod CIDR {pod_cidr} overlaps this node's"));
            continue;
        }
        if topo.own_ip == Some(node_ip) {
            skip(format!("InternalIP {node_ip} is this node's"));
            continue;
        }
        if let Some(p) = topo.peers.iter().find(|p| overlaps(p.pod_cidr, pod_cidr)) {
            let reason = format!("pod CIDR {pod_cidr} overlaps node {}'s", p.name);
            skip(reason);
            continue;
        }
        if let Some(p) = topo.peers.iter().find(|p| p.node_ip == node_ip) {
            let reason = format!("InternalIP {node_ip} is also node {}'s", p.name);
            skip(reason);
            continue;
        }
        topo.peers.push(Peer {
            name: name.to_owned(),
            pod_cidr,
            node_ip,
        });
    }
    topo
}

/// One route this module wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// The node the route leads to (for logs; not part of the route).
    pub node: String,
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Output device (the VXLAN device); `None`: the kernel picks it from the gateway.
    pub oif: Option<u32>,
    /// The gateway is reachable on `oif` without a connected route (VXLAN).
    pub onlink: bool,
}

/// Everything this module wants in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<RouteSpec>,
    /// On the VXLAN device: remote VTEP address -> remote VTEP MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// On the VXLAN device: remote VTEP MAC -> remote node IP.
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
}

/// What this module should have for `topo`. With VXLAN, `vxlan_index` is the device's index.
pub fn desired(tunnel: Tunnel, topo: &Topology, vxlan_index: Option<u32>) -> Desired {
    let mut d = Desired::default();
    for p in &topo.peers {
        match tunnel {
            Tunnel::None => d.routes.push(RouteSpec {
                node: p.name.clone(),
                dst: p.pod_cidr.network(),
                prefix: p.pod_cidr.prefix(),
                gateway: p.node_ip,
                oif: None,
                onlink: false,
            }),
            Tunnel::Vxlan => {
                let (vtep, mac) = (vtep_addr(p.pod_cidr), vtep_mac(p.pod_cidr));
                d.routes.push(RouteSpec {
                    node: p.name.clone(),
                    dst: p.pod_cidr.network(),
                    prefix: p.pod_cidr.prefix(),
                    gateway: vtep,
                    oif: vxlan_index,
                    onlink: true,
                });
                d.neighbours.insert(vtep, mac);
                d.fdb.insert(mac, p.node_ip);
            }
        }
    }
    d
}

/// An IPv4 unicast route of the main table, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub priority: u32,
    pub tos: u8,
    pub protocol: u8,
}

impl ObservedRoute {
    pub fn is_ours(&self) -> bool {
        self.protocol == RTPROT_FERRY
    }

    fn same_destination(&self, want: &RouteSpec) -> bool {
        self.dst == want.dst && self.prefix == want.prefix && self.priority == 0 && self.tos == 0
    }

    fn satisfies(&self, want: &RouteSpec) -> bool {
        self.same_destination(want)
            && self.gateway == Some(want.gateway)
            && (want.oif.is_none() || self.oif == want.oif)
    }
}

/// A neighbour entry on the VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNeighbour {
    pub ip: Ipv4Addr,
    pub mac: Option<Vec<u8>>,
    pub permanent: bool,
}

/// What the kernel has, as far as this module cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every IPv4 unicast route of the main table, ours and others'.
    pub routes: Vec<ObservedRoute>,
    /// Neighbour entries on the VXLAN device.
    pub neighbours: Vec<ObservedNeighbour>,
    /// FDB entries with a destination on the VXLAN device: (MAC, destination).
    pub fdb: Vec<(Vec<u8>, Ipv4Addr)>,
}

/// One change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the route, or replace our route to the same destination.
    ReplaceRoute(RouteSpec),
    DeleteRoute(ObservedRoute),
    ReplaceNeighbour {
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
    DeleteNeighbour {
        ip: Ipv4Addr,
    },
    ReplaceFdb {
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
    DeleteFdb {
        mac: Vec<u8>,
        dst: Ipv4Addr,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ReplaceRoute(r) => {
                write!(f, "route {}/{} via {}", r.dst, r.prefix, r.gateway)?;
                if r.oif.is_some() {
                    write!(f, " dev {VXLAN_IFNAME} onlink")?;
                }
                write!(f, " (node {})", r.node)
            }
            Action::DeleteRoute(r) => {
                write!(f, "delete route {}/{}", r.dst, r.prefix)?;
                if let Some(g) = r.gateway {
                    write!(f, " via {g}")?;
                }
                Ok(())
            }
            Action::ReplaceNeighbour { ip, mac } => {
                write!(f, "neighbour {ip} lladdr {}", link::format_mac(mac))
            }
            Action::DeleteNeighbour { ip } => write!(f, "delete neighbour {ip}"),
            Action::ReplaceFdb { mac, dst } => {
                write!(f, "fdb {} dst {dst}", link::format_mac(mac))
            }
            Action::DeleteFdb { mac, dst } => {
                write!(f, "delete fdb {} dst {dst}", link::format_mac(mac))
            }
        }
    }
}

/// A desired route left out because someone else's route holds its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub route: RouteSpec,
    pub protocol: u8,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (node {}) is already routed by a route with protocol {} that Ferry did not make",
            self.route.dst, self.route.prefix, self.route.node, self.protocol
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order: stale routes out, FDB and neighbours in (so a new route works at once),
    /// routes in, stale neighbours and FDB entries out.
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
}

/// The changes that turn `observed` into `desired`, touching only what is ours.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut plan = Plan::default();
    let ours: Vec<&ObservedRoute> = observed.routes.iter().filter(|r| r.is_ours()).collect();

    let mut replace = Vec::new();
    for want in &desired.routes {
        if ours.iter().any(|r| r.satisfies(want)) {
            continue;
        }
        // Replacing works on (destination, tos, metric) whoever made the route: never let it
        // hit someone else's.
        if let Some(foreign) = observed
            .routes
            .iter()
            .find(|r| !r.is_ours() && r.same_destination(want))
        {
            plan.conflicts.push(Conflict {
                route: want.clone(),
                protocol: foreign.protocol,
            });
            continue;
        }
        replace.push(want.clone());
    }
    for r in &ours {
        let wanted = desired.routes.iter().any(|w| r.satisfies(w));
        // A route about to be replaced in place is not deleted first (no gap in between).
        let replaced = r.priority == 0
            && r.tos == 0
            && replace
                .iter()
                .any(|w| w.dst == r.dst && w.prefix == r.prefix);
        if !wanted && !replaced {
            plan.actions.push(Action::DeleteRoute((*r).clone()));
        }
    }

    for (&mac, &dst) in &desired.fdb {
        if !observed
            .fdb
            .iter()
            .any(|(m, d)| m.as_slice() == mac && *d == dst)
        {
            plan.actions.push(Action::ReplaceFdb { mac, dst });
        }
    }
    for (&ip, &mac) in &desired.neighbours {
        let ok = observed
            .neighbours
            .iter()
            .any(|n| n.ip == ip && n.permanent && n.mac.as_deref() == Some(&mac[..]));
        if !ok {
            plan.actions.push(Action::ReplaceNeighbour { ip, mac });
        }
    }
    plan.actions
        .extend(replace.into_iter().map(Action::ReplaceRoute));

    // The VXLAN device is ours, so are its permanent entries; others (incomplete, failed)
    // the kernel ages out by itself.
    let mut seen = BTreeSet::new();
    for n in &observed.neighbours {
        if n.permanent && !desired.neighbours.contains_key(&n.ip) && seen.insert(n.ip) {
            plan.actions.push(Action::DeleteNeighbour { ip: n.ip });
        }
    }
    let mut macs_seen = BTreeSet::new();
    for (mac, dst) in &observed.fdb {
        let as_array = <[u8; 6]>::try_from(mac.as_slice()).ok();
        let wanted = as_array.and_then(|m| desired.fdb.get(&m)) == Some(dst);
        // A replace rewrites the first destination of a MAC in place: not deleted first.
        let first = macs_seen.insert(mac.clone());
        let replaced = first
            && plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::ReplaceFdb { mac: m, .. } if Some(*m) == as_array));
        if !wanted && !replaced {
            plan.actions.push(Action::DeleteFdb {
                mac: mac.clone(),
                dst: *dst,
            });
        }
    }
    plan
}

/// The VXLAN device this node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The interface holding `local`, when there is one.
    pub underlay: Option<u32>,
    pub mac: [u8; 6],
    pub vtep: Ipv4Addr,
}

impl VxlanSpec {
    pub fn new(own_cidr: Ipv4Cidr, local: Ipv4Addr, underlay: Option<u32>) -> Self {
        VxlanSpec {
            vni: VXLAN_VNI,
            local,
            port: VXLAN_PORT,
            underlay,
            mac: vtep_mac(own_cidr),
            vtep: vtep_addr(own_cidr),
        }
    }

    /// Whether an existing VXLAN link can be kept as it is (else it is recreated: VNI, local
    /// address, port and underlay cannot be changed on a live device).
    pub fn matches(&self, link: &LinkMessage) -> bool {
        let infos: &[InfoVxlan] = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.as_slice()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap_or(&[]);
        let has = |want: &InfoVxlan| infos.contains(want);
        let underlay_ok = match self.underlay {
            Some(i) => has(&InfoVxlan::Link(i)),
            None => true,
        };
        has(&InfoVxlan::Id(self.vni))
            && has(&InfoVxlan::Local(self.local))
            && has(&InfoVxlan::Port(self.port))
            && has(&InfoVxlan::Learning(false))
            && underlay_ok
            && link::link_mac(link) == Some(&self.mac[..])
    }
}

// ---------------------------------------------------------------------------------------------
// Netlink: observing and applying.

fn route_from(msg: &RouteMessage) -> Option<ObservedRoute> {
    if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut r = ObservedRoute {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        priority: 0,
        tos: msg.header.tos,
        protocol: u8::from(msg.header.protocol),
    };
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = *p,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(r)
}

fn neighbour_ip(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// An FDB entry's destination. netlink-packet-route parses NDA_DST by the message's family,
/// and leaves it raw for AF_BRIDGE.
fn fdb_dst(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neighbour_mac(msg: &NeighbourMessage) -> Option<Vec<u8>> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
        _ => None,
    })
}

async fn observe(h: &Handle, vxlan_index: Option<u32>) -> Result<Observed> {
    let mut observed = Observed::default();
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = routes
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink("listing routes", e))?
    {
        observed.routes.extend(route_from(&msg));
    }
    let Some(index) = vxlan_index else {
        return Ok(observed);
    };
    let mut neighbours = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(msg) = neighbours
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink("listing neighbours", e))?
    {
        if msg.header.ifindex != index || msg.header.family != AddressFamily::Inet {
            continue;
        }
        if let Some(ip) = neighbour_ip(&msg) {
            observed.neighbours.push(ObservedNeighbour {
                ip,
                mac: neighbour_mac(&msg),
                permanent: msg.header.state == NeighbourState::Permanent,
            });
        }
    }
    let mut fdb = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(msg) = fdb
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink("listing FDB entries", e))?
    {
        if msg.header.ifindex != index || msg.header.family != AddressFamily::Bridge {
            continue;
        }
        if let (Some(mac), Some(dst)) = (neighbour_mac(&msg), fdb_dst(&msg)) {
            observed.fdb.push((mac, dst));
        }
    }
    Ok(observed)
}

fn route_message(dst: Ipv4Addr, prefix: u8) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix)
        .protocol(RouteProtocol::from(RTPROT_FERRY))
}

/// Whether a delete failed only because the thing is already gone (ESRCH for routes, ENOENT
/// for neighbour and FDB entries): the goal is reached either way.
fn already_gone(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = -m.raw_code();
            errno == libc::ESRCH || errno == libc::ENOENT
        }
        _ => false,
    }
}

async fn apply(h: &Handle, action: &Action, vxlan_index: Option<u32>) -> Result<()> {
    let deleted = |r: std::result::Result<(), rtnetlink::Error>| match r {
        Err(e) if already_gone(&e) => Ok(()),
        other => other,
    };
    let vxlan = || {
        vxlan_index.ok_or_else(|| NetworkError::InvalidInput {
            what: "link",
            value: VXLAN_IFNAME.into(),
            reason: "does not exist",
        })
    };
    let op = || action.to_string();
    match action {
        Action::ReplaceRoute(r) => {
            let mut b = route_message(r.dst, r.prefix).gateway(r.gateway);
            if let Some(oif) = r.oif {
                b = b.output_interface(oif);
            }
            if r.onlink {
                b = b.onlink();
            }
            h.route()
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(|e| NetworkError::netlink(op(), e))
        }
        Action::DeleteRoute(r) => {
            let mut b = route_message(r.dst, r.prefix);
            if let Some(g) = r.gateway {
                b = b.gateway(g);
            }
            if let Some(oif) = r.oif {
                b = b.output_interface(oif);
            }
            if r.priority != 0 {
                b = b.priority(r.priority);
            }
            let mut msg = b.build();
            msg.header.tos = r.tos;
            deleted(h.route().del(msg).execute().await).map_err(|e| NetworkError::netlink(op(), e))
        }
        Action::ReplaceNeighbour { ip, mac } => h
            .neighbours()
            .add(vxlan()?, IpAddr::V4(*ip))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(op(), e)),
        Action::DeleteNeighbour { ip } => {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.ifindex = vxlan()?;
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
            deleted(h.neighbours().del(msg).execute().await)
                .map_err(|e| NetworkError::netlink(op(), e))
        }
        Action::ReplaceFdb { mac, dst } => h
            .neighbours()
            .add_bridge(vxlan()?, mac)
            .destination(IpAddr::V4(*dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(op(), e)),
        Action::DeleteFdb { mac, dst } => {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Bridge;
            msg.header.ifindex = vxlan()?;
            msg.header.flags = NeighbourFlags::Own;
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.clone()));
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    *dst,
                )));
            deleted(h.neighbours().del(msg).execute().await)
                .map_err(|e| NetworkError::netlink(op(), e))
        }
    }
}

/// The index of the interface holding `ip`, if any.
async fn interface_with(h: &Handle, ip: Ipv4Addr) -> Result<Option<u32>> {
    let mut addrs = h.address().get().execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink("listing addresses", e))?
    {
        let holds = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip)
        });
        if holds {
            return Ok(Some(msg.header.index));
        }
    }
    Ok(None)
}

/// Makes the VXLAN device exist as `spec` says, up, with only the VTEP address on it.
async fn ensure_vxlan(h: &Handle, spec: &VxlanSpec) -> Result<u32> {
    let existing = match link::link_by_name(h, VXLAN_IFNAME).await? {
        Some(l) => match link::link_kind(&l) {
            Some(InfoKind::Vxlan) if spec.matches(&l) => Some(l.header.index),
            Some(InfoKind::Vxlan) => {
                tracing::info!(
                    device = VXLAN_IFNAME,
                    "VXLAN device settings changed (node address or pod CIDR); recreating it"
                );
                link::delete_link(h, VXLAN_IFNAME).await?;
                None
            }
            other => {
                return Err(NetworkError::LinkKind {
                    name: VXLAN_IFNAME.into(),
                    expected: "vxlan",
                    found: other.map_or_else(|| "link of unknown kind".into(), |k| k.to_string()),
                });
            }
        },
        None => None,
    };
    let index = match existing {
        Some(i) => i,
        None => {
            let mut b = LinkVxlan::new(VXLAN_IFNAME, spec.vni)
                .local(spec.local)
                .port(spec.port)
                .learning(false)
                .address(spec.mac.to_vec());
            if let Some(u) = spec.underlay {
                b = b.dev(u);
            }
            h.link()
                .add(b.build())
                .execute()
                .await
                .map_err(|e| NetworkError::netlink(format!("creating {VXLAN_IFNAME}"), e))?;
            tracing::info!(
                device = VXLAN_IFNAME,
                vni = spec.vni,
                local = %spec.local,
                port = spec.port,
                mac = %link::format_mac(&spec.mac),
                "VXLAN device created"
            );
            link::link_by_name(h, VXLAN_IFNAME)
                .await?
                .ok_or_else(|| NetworkError::InvalidInput {
                    what: "link",
                    value: VXLAN_IFNAME.into(),
                    reason: "vanished right after it was created",
                })?
                .header
                .index
        }
    };
    h.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("setting {VXLAN_IFNAME} up"), e))?;
    // Only the VTEP address: an old one (pod CIDR changed) would answer for another node.
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    let mut stale = Vec::new();
    let mut present = false;
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink(format!("listing {VXLAN_IFNAME} addresses"), e))?
    {
        if msg.header.index != index || msg.header.family != AddressFamily::Inet {
            continue;
        }
        let is_vtep = msg.header.prefix_len == 32
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(x)) if *x == spec.vtep));
        if is_vtep {
            present = true;
        } else {
            stale.push(msg);
        }
    }
    for msg in stale {
        h.address().del(msg).execute().await.map_err(|e| {
            NetworkError::netlink(format!("removing an old {VXLAN_IFNAME} address"), e)
        })?;
    }
    if !present {
        h.address()
            .add(index, IpAddr::V4(spec.vtep), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetworkError::netlink(format!("adding {}/32 to {VXLAN_IFNAME}", spec.vtep), e)
            })?;
    }
    Ok(index)
}

/// What one resync did.
#[derive(Debug, Default)]
struct Report {
    waiting: Option<&'static str>,
    applied: Vec<Action>,
    failed: Vec<(Action, NetworkError)>,
    conflicts: Vec<Conflict>,
}

async fn reconcile(
    h: &Handle,
    tunnel: Tunnel,
    topo: &Topology,
    own_ip: Option<Ipv4Addr>,
) -> Result<Report> {
    let mut report = Report::default();
    let vxlan_index = match tunnel {
        Tunnel::None => {
            // Left over from running with --tunnel vxlan: ours by name, and its routes go
            // with it.
            if let Some(l) = link::link_by_name(h, VXLAN_IFNAME).await?
                && link::link_kind(&l) == Some(&InfoKind::Vxlan)
            {
                link::delete_link(h, VXLAN_IFNAME).await?;
                tracing::info!(
                    device = VXLAN_IFNAME,
                    "VXLAN device removed (--tunnel none)"
                );
            }
            None
        }
        Tunnel::Vxlan => {
            let (Some(cidr), Some(ip)) = (topo.own_cidr, own_ip) else {
                report.waiting = Some("this node's pod CIDR and IPv4 address");
                return Ok(report);
            };
            let underlay = interface_with(h, ip).await?;
            Some(ensure_vxlan(h, &VxlanSpec::new(cidr, ip, underlay)).await?)
        }
    };
    let want = desired(tunnel, topo, vxlan_index);
    let have = observe(h, vxlan_index).await?;
    let p = plan(&want, &have);
    report.conflicts = p.conflicts;
    for action in p.actions {
        match apply(h, &action, vxlan_index).await {
            Ok(()) => report.applied.push(action),
            Err(e) => report.failed.push((action, e)),
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The loop.

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct RouteOptions {
    pub node_name: String,
    /// This node's address (`--node-ip`, or the one the agent registered); the VXLAN device's
    /// local address. Without it the Node's InternalIP is used.
    pub node_ip: Option<IpAddr>,
    pub tunnel: Tunnel,
}

/// Sets `net.ipv4.ip_forward=1` in this process's network namespace (the node's).
pub fn enable_ip_forward() {
    match std::fs::read_to_string(IP_FORWARD) {
        Ok(v) if v.trim() == "1" => {
            tracing::info!("IPv4 forwarding (net.ipv4.ip_forward) is enabled on this node");
        }
        _ => match std::fs::write(IP_FORWARD, "1\n") {
            Ok(()) => tracing::info!(
                "enabled IPv4 forwarding (net.ipv4.ip_forward=1) in this node's network namespace"
            ),
            Err(e) => tracing::warn!(
                "cannot enable IPv4 forwarding ({IP_FORWARD}): {e}; pods will not reach other nodes"
            ),
        },
    }
}

struct Syncer {
    opts: RouteOptions,
    node_ns: NetnsHandle,
    /// Last logged skip reasons and conflicts, to log them when they change, not every resync.
    last_notes: Vec<String>,
}

impl Syncer {
    async fn sync(&mut self, nodes: &BTreeMap<String, Value>) {
        let topo = topology(&self.opts.node_name, nodes.values());
        let own_ip = match self.opts.node_ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => topo.own_ip,
        };
        let tunnel = self.opts.tunnel;
        let t = topo.clone();
        let result = netns::with_netlink_in(
            &self.node_ns,
            "syncing routes to other nodes",
            move |h| async move { reconcile(&h, tunnel, &t, own_ip).await },
        )
        .await;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("syncing routes to other nodes: {e}");
                return;
            }
        };
        for a in &report.applied {
            tracing::info!(tunnel = %tunnel, "{a}");
        }
        for (a, e) in &report.failed {
            tracing::warn!(tunnel = %tunnel, "{a}: {e}");
        }
        let mut notes: Vec<String> = topo
            .skipped
            .iter()
            .map(|(n, why)| format!("not routing to node {n}: {why}"))
            .collect();
        notes.extend(report.conflicts.iter().map(|c| format!("not routing {c}")));
        if let Some(w) = report.waiting {
            notes.push(format!("VXLAN: waiting for {w}"));
        }
        if notes != self.last_notes {
            for n in &notes {
                tracing::info!("{n}");
            }
            self.last_notes = notes;
        }
        if !report.applied.is_empty() || !report.failed.is_empty() {
            tracing::info!(
                peers = topo.peers.len(),
                changes = report.applied.len(),
                failed = report.failed.len(),
                "routes to other nodes synced"
            );
        }
    }
}

/// Applies a watch event to the cache; whether it was a change (not a bookmark).
fn apply_event(nodes: &mut BTreeMap<String, Value>, ev: WatchEvent) -> bool {
    let Some(name) = ev
        .object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return false;
    };
    match ev.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            nodes.insert(name, ev.object);
            true
        }
        "DELETED" => {
            nodes.remove(&name);
            true
        }
        _ => false,
    }
}

/// Keeps the routes to the other nodes until the process ends (see the module docs). Lists
/// and watches Nodes with the agent's client; never returns.
pub async fn run(client: Client, opts: RouteOptions) {
    enable_ip_forward();
    let node_ns = match NetnsHandle::current() {
        Ok(ns) => ns,
        Err(e) => {
            tracing::error!("routes to other nodes disabled: {e}");
            return;
        }
    };
    tracing::info!(tunnel = %opts.tunnel, "routing to other nodes' pod CIDRs");
    let mut syncer = Syncer {
        opts,
        node_ns,
        last_notes: Vec::new(),
    };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let all = ListOptions::default();
    loop {
        let list = match client.list("Node", &all).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listing nodes for routing: {e}");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut nodes: BTreeMap<String, Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let name = n.pointer("/metadata/name")?.as_str()?;
                Some((name.to_string(), n.clone()))
            })
            .collect();
        syncer.sync(&nodes).await;
        resync.reset();
        // No bookmarks: a broken watch is answered by a fresh list anyway.
        let mut events = match client.watch("Node", &all, &rv, false).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("watching nodes for routing: {e}");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        let mut changed = apply_event(&mut nodes, ev);
                        // Fold a burst (several nodes changing at once) into one resync.
                        while let Ok(Some(Ok(ev))) = tokio::time::timeout(COALESCE, events.next()).await {
                            changed |= apply_event(&mut nodes, ev);
                        }
                        if changed {
                            syncer.sync(&nodes).await;
                        }
                    }
                    Some(Err(e)) => {
                        if !e.is_gone() {
                            tracing::warn!("node watch for routing ended: {e}; relisting");
                        }
                        break;
                    }
                    None => break,
                },
                _ = resync.tick() => syncer.sync(&nodes).await,
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": [
            {"type": "Hostname", "address": name}
        ]}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        if let Some(ip) = ip {
            n["status"]["addresses"]
                .as_array_mut()
                .unwrap()
                .insert(0, json!({"type": "InternalIP", "address": ip}));
        }
        n
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn three() -> Vec<Value> {
        vec![
            node("c", Some("10.244.2.0/24"), Some("172.30.5.12")),
            node("a", Some("10.244.0.0/24"), Some("172.30.5.10")),
            node("b", Some("10.244.1.0/24"), Some("172.30.5.11")),
        ]
    }

    fn ours(dst: &str, prefix: u8, gw: &str, oif: Option<u32>) -> ObservedRoute {
        ObservedRoute {
            dst: ip(dst),
            prefix,
            gateway: Some(ip(gw)),
            oif,
            priority: 0,
            tos: 0,
            protocol: RTPROT_FERRY,
        }
    }

    #[test]
    fn tunnel_flag_values() {
        assert_eq!("none".parse::<Tunnel>(), Ok(Tunnel::None));
        assert_eq!("vxlan".parse::<Tunnel>(), Ok(Tunnel::Vxlan));
        assert!("ipip".parse::<Tunnel>().is_err());
        assert_eq!(Tunnel::default(), Tunnel::None);
        assert_eq!(Tunnel::Vxlan.to_string(), "vxlan");
    }

    #[test]
    fn vtep_mac_and_address_follow_the_pod_cidr() {
        let c = cidr("10.244.3.0/24");
        assert_eq!(
            link::format_mac(&vtep_mac(c)),
            "0e:46:0a:f4:03:00",
            "locally administered unicast"
        );
        assert_eq!(vtep_mac(c)[0] & 0b11, 0b10);
        assert_eq!(vtep_addr(c), ip("10.244.3.0"));
    }

    #[test]
    fn topology_takes_other_nodes_with_cidr_and_address() {
        let mut nodes = three();
        nodes.push(node("d", None, Some("172.30.5.13")));
        nodes.push(node("e", Some("10.244.4.0/24"), None));
        nodes.push(node("f", Some("10.244.5.0/24"), Some("fd00::1")));
        nodes.push(node("g", Some("not-a-cidr"), Some("172.30.5.14")));
        let t = topology("a", &nodes);
        assert_eq!(t.own_cidr, Some(cidr("10.244.0.0/24")));
        assert_eq!(t.own_ip, Some(ip("172.30.5.10")));
        assert_eq!(
            t.peers,
            vec![
                Peer {
                    name: "b".into(),
                    pod_cidr: cidr("10.244.1.0/24"),
                    node_ip: ip("172.30.5.11")
                },
                Peer {
                    name: "c".into(),
                    pod_cidr: cidr("10.244.2.0/24"),
                    node_ip: ip("172.30.5.12")
                },
            ]
        );
        let skipped: Vec<&str> = t.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["d", "e", "f", "g"]);
    }

    #[test]
    fn topology_refuses_overlaps_and_shared_addresses() {
        let nodes = vec![
            node("a", Some("10.244.0.0/24"), Some("172.30.5.10")),
            // Inside a's range.
            node("b", Some("10.244.0.0/25"), Some("172.30.5.11")),
            node("c", Some("10.244.2.0/24"), Some("172.30.5.12")),
            // Same range as c, later by name.
            node("d", Some("10.244.2.0/24"), Some("172.30.5.13")),
            // c's address.
            node("e", Some("10.244.5.0/24"), Some("172.30.5.12")),
            // a's address (two agents on one host, as in the loopback tests).
            node("f", Some("10.244.6.0/24"), Some("172.30.5.10")),
        ];
        let t = topology("a", &nodes);
        let peers: Vec<&str> = t.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["c"]);
        assert_eq!(t.skipped.len(), 4, "{:?}", t.skipped);
    }

    #[test]
    fn topology_without_own_node_still_routes() {
        let t = topology("z", &three());
        assert_eq!(t.own_cidr, None);
        assert_eq!(t.peers.len(), 3);
    }

    #[test]
    fn desired_direct_routes() {
        let t = topology("a", &three());
        let d = desired(Tunnel::None, &t, None);
        assert_eq!(d.routes.len(), 2);
        assert_eq!(d.routes[0].dst, ip("10.244.1.0"));
        assert_eq!(d.routes[0].prefix, 24);
        assert_eq!(d.routes[0].gateway, ip("172.30.5.11"));
        assert_eq!(d.routes[0].oif, None);
        assert!(!d.routes[0].onlink);
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    }

    #[test]
    fn desired_vxlan_routes_neighbours_and_fdb() {
        let t = topology("a", &three());
        let d = desired(Tunnel::Vxlan, &t, Some(9));
        assert_eq!(d.routes[1].dst, ip("10.244.2.0"));
        assert_eq!(d.routes[1].gateway, ip("10.244.2.0"));
        assert_eq!(d.routes[1].oif, Some(9));
        assert!(d.routes[1].onlink);
        let mac_c = vtep_mac(cidr("10.244.2.0/24"));
        assert_eq!(d.neighbours.get(&ip("10.244.2.0")), Some(&mac_c));
        assert_eq!(d.fdb.get(&mac_c), Some(&ip("172.30.5.12")));
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(d.fdb.len(), 2);
    }

    #[test]
    fn plan_adds_missing_and_keeps_present_routes() {
        let d = desired(Tunnel::None, &topology("a", &three()), None);
        let observed = Observed {
            routes: vec![
                ours("10.244.1.0", 24, "172.30.5.11", Some(2)),
                // Someone else's route elsewhere: irrelevant.
                ObservedRoute {
                    dst: ip("0.0.0.0"),
                    prefix: 0,
                    gateway: Some(ip("172.30.5.1")),
                    oif: Some(2),
                    priority: 0,
                    tos: 0,
                    protocol: 4,
                },
            ],
            ..Default::default()
        };
        let p = plan(&d, &observed);
        assert_eq!(p.actions, vec![Action::ReplaceRoute(d.routes[1].clone())]);
        assert!(p.conflicts.is_empty());
        // Converged: nothing to do.
        let mut observed = observed;
        observed
            .routes
            .push(ours("10.244.2.0", 24, "172.30.5.12", Some(2)));
        assert_eq!(plan(&d, &observed), Plan::default());
    }

    #[test]
    fn plan_replaces_changed_routes_in_place_and_deletes_gone_ones() {
        let d = desired(Tunnel::None, &topology("a", &three()), None);
        let observed = Observed {
            routes: vec![
                // b moved to another address.
                ours("10.244.1.0", 24, "172.30.5.99", None),
                ours("10.244.2.0", 24, "172.30.5.12", None),
                // A node that is gone.
                ours("10.244.7.0", 24, "172.30.5.17", None),
            ],
            ..Default::default()
        };
        let p = plan(&d, &observed);
        assert_eq!(
            p.actions,
            vec![
                Action::DeleteRoute(ours("10.244.7.0", 24, "172.30.5.17", None)),
                Action::ReplaceRoute(d.routes[0].clone()),
            ]
        );
    }

    #[test]
    fn plan_never_touches_foreign_routes() {
        let d = desired(Tunnel::None, &topology("a", &three()), None);
        let foreign = |dst: &str, protocol: u8, priority: u32| ObservedRoute {
            dst: ip(dst),
            prefix: 24,
            gateway: Some(ip("192.0.2.1")),
            oif: Some(3),
            priority,
            tos: 0,
            protocol,
        };
        let observed = Observed {
            routes: vec![
                // An operator's static route to b's range: a conflict, left alone.
                foreign("10.244.1.0", 4, 0),
                // Another route to c's range with a metric: coexists with ours.
                foreign("10.244.2.0", 4, 100),
                // Unrelated static and kernel routes, not ours to delete.
                foreign("10.244.9.0", 4, 0),
                foreign("172.30.5.0", 2, 0),
            ],
            ..Default::default()
        };
        let p = plan(&d, &observed);
        assert_eq!(p.actions, vec![Action::ReplaceRoute(d.routes[1].clone())]);
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].route, d.routes[0]);
        assert_eq!(p.conflicts[0].protocol, 4);
        assert!(p.conflicts[0].to_string().contains("protocol 4"));
    }

    #[test]
    fn plan_with_no_peers_removes_only_ours() {
        let observed = Observed {
            routes: vec![
                ours("10.244.1.0", 24, "172.30.5.11", None),
                ObservedRoute {
                    protocol: 4,
                    ..ours("10.244.2.0", 24, "172.30.5.12", None)
                },
            ],
            ..Default::default()
        };
        let p = plan(&Desired::default(), &observed);
        assert_eq!(
            p.actions,
            vec![Action::DeleteRoute(ours(
                "10.244.1.0",
                24,
                "172.30.5.11",
                None
            ))]
        );
    }

    #[test]
    fn plan_vxlan_from_scratch_orders_fdb_and_neighbours_before_routes() {
        let d = desired(Tunnel::Vxlan, &topology("a", &three()), Some(9));
        let p = plan(&d, &Observed::default());
        let kinds: Vec<&str> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::ReplaceFdb { .. } => "fdb",
                Action::ReplaceNeighbour { .. } => "neigh",
                Action::ReplaceRoute(_) => "route",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["fdb", "fdb", "neigh", "neigh", "route", "route"]);
    }

    #[test]
    fn plan_vxlan_fixes_and_removes_entries() {
        let t = topology("a", &three());
        let d = desired(Tunnel::Vxlan, &t, Some(9));
        let (mac_b, mac_c) = (
            vtep_mac(cidr("10.244.1.0/24")),
            vtep_mac(cidr("10.244.2.0/24")),
        );
        let gone_mac = vtep_mac(cidr("10.244.7.0/24"));
        let observed = Observed {
            routes: vec![
                ours("10.244.1.0", 24, "10.244.1.0", Some(9)),
                ours("10.244.2.0", 24, "10.244.2.0", Some(9)),
                ours("10.244.7.0", 24, "10.244.7.0", Some(9)),
            ],
            neighbours: vec![
                ObservedNeighbour {
                    ip: ip("10.244.1.0"),
                    mac: Some(mac_b.to_vec()),
                    permanent: true,
                },
                // c's entry not permanent (an ARP attempt): made permanent.
                ObservedNeighbour {
                    ip: ip("10.244.2.0"),
                    mac: None,
                    permanent: false,
                },
                ObservedNeighbour {
                    ip: ip("10.244.7.0"),
                    mac: Some(gone_mac.to_vec()),
                    permanent: true,
                },
            ],
            fdb: vec![
                (mac_b.to_vec(), ip("172.30.5.11")),
                // c moved.
                (mac_c.to_vec(), ip("172.30.5.99")),
                (gone_mac.to_vec(), ip("172.30.5.17")),
            ],
        };
        let p = plan(&d, &observed);
        assert_eq!(
            p.actions,
            vec![
                Action::DeleteRoute(ours("10.244.7.0", 24, "10.244.7.0", Some(9))),
                Action::ReplaceFdb {
                    mac: mac_c,
                    dst: ip("172.30.5.12")
                },
                Action::ReplaceNeighbour {
                    ip: ip("10.244.2.0"),
                    mac: mac_c
                },
                Action::DeleteNeighbour {
                    ip: ip("10.244.7.0")
                },
                Action::DeleteFdb {
                    mac: gone_mac.to_vec(),
                    dst: ip("172.30.5.17")
                },
            ]
        );
    }

    #[test]
    fn plan_switching_from_direct_to_vxlan_replaces_routes() {
        let d = desired(Tunnel::Vxlan, &topology("a", &three()), Some(9));
        let observed = Observed {
            routes: vec![
                ours("10.244.1.0", 24, "172.30.5.11", Some(2)),
                ours("10.244.2.0", 24, "172.30.5.12", Some(2)),
            ],
            ..Default::default()
        };
        let p = plan(&d, &observed);
        let routes: Vec<&Action> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::ReplaceRoute(_) | Action::DeleteRoute(_)))
            .collect();
        assert_eq!(
            routes,
            [
                &Action::ReplaceRoute(d.routes[0].clone()),
                &Action::ReplaceRoute(d.routes[1].clone())
            ]
        );
    }

    #[test]
    fn route_messages_parse() {
        let mut msg = route_message(ip("10.244.1.0"), 24)
            .gateway(ip("172.30.5.11"))
            .output_interface(4)
            .build();
        let r = route_from(&msg).unwrap();
        assert_eq!(r, ours("10.244.1.0", 24, "172.30.5.11", Some(4)));
        msg.header.table = 100;
        assert_eq!(route_from(&msg), None, "other tables are not looked at");
    }

    #[test]
    fn fdb_destinations_parse_raw_or_typed() {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![172, 30, 5, 12],
            )));
        assert_eq!(fdb_dst(&msg), Some(ip("172.30.5.12")));
        msg.attributes[0] =
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip("172.30.5.13")));
        assert_eq!(fdb_dst(&msg), Some(ip("172.30.5.13")));
        msg.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Other(vec![0; 16]));
        assert_eq!(fdb_dst(&msg), None, "IPv6 underlay is not ours");
    }

    #[test]
    fn vxlan_spec_matching() {
        let spec = VxlanSpec::new(cidr("10.244.1.0/24"), ip("172.30.5.11"), Some(2));
        let build = |local: &str, mac: [u8; 6]| {
            LinkVxlan::new(VXLAN_IFNAME, VXLAN_VNI)
                .local(ip(local))
                .port(VXLAN_PORT)
                .learning(false)
                .dev(2)
                .address(mac.to_vec())
                .build()
        };
        assert!(spec.matches(&build("172.30.5.11", spec.mac)));
        assert!(!spec.matches(&build("172.30.5.12", spec.mac)));
        assert!(!spec.matches(&build("172.30.5.11", vtep_mac(cidr("10.244.2.0/24")))));
        let mut no_underlay = spec.clone();
        no_underlay.underlay = None;
        assert!(no_underlay.matches(&build("172.30.5.11", spec.mac)));
    }

    #[test]
    fn watch_events_update_the_cache() {
        let mut nodes = BTreeMap::new();
        let ev = |kind: &str, n: Value| WatchEvent {
            kind: kind.into(),
            object: n,
        };
        assert!(apply_event(&mut nodes, ev("ADDED", node("a", None, None))));
        assert!(apply_event(
            &mut nodes,
            ev("MODIFIED", node("a", Some("10.244.0.0/24"), None))
        ));
        assert!(apply_event(&mut nodes, ev("ADDED", node("b", None, None))));
        assert!(!apply_event(
            &mut nodes,
            ev("BOOKMARK", json!({"metadata": {"resourceVersion": "9"}}))
        ));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes["a"]["spec"]["podCIDR"], "10.244.0.0/24");
        assert!(apply_event(
            &mut nodes,
            ev("DELETED", node("b", None, None))
        ));
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a"]);
    }
}
