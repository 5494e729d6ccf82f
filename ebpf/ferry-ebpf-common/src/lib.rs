//! Map key and value types shared by Ferry's eBPF programs (`ferry-ebpf`) and the agent.
//!
//! This crate owns the byte layout of every map the datapath exposes. Both sides compile these
//! exact definitions, so a layout change is a change to the kernel/userspace ABI:
//!
//! - every type is `#[repr(C)]` with explicit padding fields and a compile-time size assert;
//! - enums crossing the boundary are plain `u32` tags (constants on the enum), never Rust enums
//!   in map memory and never `Option<_>`;
//! - padding fields must be zero when userspace writes a key, because the kernel hashes all
//!   bytes of the key.
//!
//! It must stay `no_std` and dependency-free for the BPF build; the `user` feature (agent only)
//! adds `aya::Pod` impls.
#![no_std]

/// Name of the hash map of denied destination ports (`DenyKey` -> `DenyValue`).
pub const DENY_PORTS_MAP: &str = "FERRY_DENY_PORTS";
/// Name of the per-CPU array of packet/byte counters indexed by [`Verdict`].
pub const VERDICT_STATS_MAP: &str = "FERRY_VERDICT_STATS";
/// Name of the per-CPU array of `u64` drop counters indexed by [`DropReason`].
pub const DROP_REASONS_MAP: &str = "FERRY_DROP_REASONS";
/// Name of the TC classifier program that enforces the deny list.
pub const TC_DENY_PROGRAM: &str = "ferry_tc_deny";

/// Capacity of [`DENY_PORTS_MAP`].
pub const DENY_PORTS_MAX_ENTRIES: u32 = 1024;

/// IP protocol numbers as they appear in the IPv4 header's protocol field.
pub mod ipproto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Key of [`DENY_PORTS_MAP`]: an L4 destination port for one IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenyKey {
    /// Destination port in host byte order.
    pub port: u16,
    /// IP protocol number, see [`ipproto`].
    pub proto: u8,
    /// Explicit padding; always zero (the kernel hashes it).
    pub _pad: u8,
}

impl DenyKey {
    pub const fn new(port: u16, proto: u8) -> Self {
        Self {
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of [`DENY_PORTS_MAP`]. Presence of the key is the rule; the flags are reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyValue {
    /// Reserved for per-rule options; zero today.
    pub flags: u32,
}

/// Index into [`VERDICT_STATS_MAP`]: what the program decided for a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
}

impl Verdict {
    /// Number of entries in [`VERDICT_STATS_MAP`].
    pub const COUNT: u32 = 2;
    pub const ALL: [Verdict; Self::COUNT as usize] = [Verdict::Pass, Verdict::Drop];
}

/// Index into [`DROP_REASONS_MAP`]: why a packet was dropped. Every `TC_ACT_SHOT` the
/// programs return is counted under exactly one reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The destination port/protocol is in [`DENY_PORTS_MAP`].
    DeniedPort = 0,
    /// An IPv4 TCP/UDP packet too short to hold the headers it announces.
    Malformed = 1,
    /// A NodePort or LoadBalancer frontend without usable backends.
    NoBackend = 2,
    /// No route or neighbour towards a translated packet's destination.
    NoRoute = 3,
    /// No free SNAT source port for a new flow to a remote backend.
    NatExhausted = 4,
    /// A packet bigger than the route towards its translated destination allows: with DF set
    /// the sender gets "fragmentation needed" instead (counted as `NsStat::FragNeeded`); this
    /// counts those without DF (they are not fragmented here) and errors that could not be
    /// built.
    TooBig = 5,
}

impl DropReason {
    /// Number of entries in [`DROP_REASONS_MAP`].
    pub const COUNT: u32 = 6;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::DeniedPort,
        DropReason::Malformed,
        DropReason::NoBackend,
        DropReason::NoRoute,
        DropReason::NatExhausted,
        DropReason::TooBig,
    ];
}

/// Value of [`VERDICT_STATS_MAP`] (one per CPU per verdict).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    /// Sum of `skb->len` (L2 frame length as seen by TC).
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<DenyKey>() == 4);
const _: () = assert!(core::mem::align_of::<DenyKey>() == 2);
const _: () = assert!(core::mem::size_of::<DenyValue>() == 4);
const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);
const _: () = assert!(core::mem::size_of::<Verdict>() == 4);
const _: () = assert!(core::mem::size_of::<DropReason>() == 4);

// ---------------------------------------------------------------------------------------------
// Service load balancing (socket level: cgroup connect4 / sendmsg4 / recvmsg4 / getpeername4).
//
// Addresses and ports are stored in network byte order, exactly as `bpf_sock_addr.user_ip4`
// and the low 16 bits of `user_port` hold them, so the programs compare and copy without
// swapping. The layout follows Cilium's (`cilium_lb4_services_v2`): per frontend, slot 0 is the
// master entry (how many backends, which rev-NAT id, flags) and slots 1..=n name backends.

/// `Svc4Key` -> `Svc4Value`: frontends (ClusterIP, NodePort with address 0, LoadBalancer and
/// external IPs) and their backend slots.
pub const SVC4_MAP: &str = "FERRY_SVC4";
/// `u32` backend id -> `Backend4`.
pub const BACKENDS4_MAP: &str = "FERRY_BACKENDS4";
/// `SockRevKey` -> `SockRevValue` (LRU): which frontend a socket's backend stands for, so
/// replies and `getpeername` show the service address.
pub const SOCK_REVNAT4_MAP: &str = "FERRY_SOCK_REVNAT4";
/// `Affinity4Key` -> `Affinity4Value` (LRU): sessionAffinity ClientIP, per client network
/// namespace (no source address exists at connect time).
pub const AFFINITY4_MAP: &str = "FERRY_AFFINITY4";
/// `u32` address -> `u32` flags: this node's own addresses (NodePort frontends match them).
pub const NODE_IPS4_MAP: &str = "FERRY_NODE_IPS4";
/// Per-CPU array of `u64` counters indexed by [`SockStat`].
pub const SOCK_STATS_MAP: &str = "FERRY_SOCK_STATS";

pub const SVC4_MAX_ENTRIES: u32 = 262144;
pub const BACKENDS4_MAX_ENTRIES: u32 = 131072;
pub const SOCK_REVNAT4_MAX_ENTRIES: u32 = 262144;
pub const AFFINITY4_MAX_ENTRIES: u32 = 65536;
pub const NODE_IPS4_MAX_ENTRIES: u32 = 256;
/// Hash map `u32` (network order) -> `u32` (1): the addresses of every node of the cluster.
/// Nodes route the pod network, so traffic of pods to them is never masqueraded (it may be a
/// pod's reply to a request another node SNAT-ed to its own address).
pub const PEER_IPS4_MAP: &str = "FERRY_PEER_IPS4";
pub const PEER_IPS4_MAX_ENTRIES: u32 = 4096;

/// The socket programs, by attach type.
pub const PROG_CONNECT4: &str = "ferry_connect4";
pub const PROG_SENDMSG4: &str = "ferry_sendmsg4";
pub const PROG_RECVMSG4: &str = "ferry_recvmsg4";
pub const PROG_GETPEERNAME4: &str = "ferry_getpeername4";

/// Bits of [`Svc4Value::flags`].
pub mod svc_flags {
    /// sessionAffinity: ClientIP, for `affinity_s` seconds.
    pub const AFFINITY: u16 = 1;
    /// Set on an [`svc_scope::INTERNAL`] master entry whose frontend also has an
    /// [`svc_scope::EXTERNAL`] entry (externalTrafficPolicy: Local), so traffic from outside
    /// looks that one up and other traffic never pays for the second lookup.
    pub const HAS_EXTERNAL: u16 = 2;
    /// The frontend has a Maglev table in [`super::MAGLEV4_MAP`] (north-south frontends:
    /// NodePorts, LoadBalancer and external IPs); traffic from outside picks its backend there.
    pub const MAGLEV: u16 = 4;
}

/// Values of [`Svc4Key::scope`]: which clients an entry's backends serve.
pub mod svc_scope {
    /// Connections made on this node (socket load balancing) and, unless an
    /// [`EXTERNAL`] entry exists, traffic from outside too. internalTrafficPolicy: Local
    /// narrows a ClusterIP's internal entry to this node's endpoints.
    pub const INTERNAL: u8 = 0;
    /// Traffic from outside the node to a NodePort, LoadBalancer or external IP with
    /// externalTrafficPolicy: Local: this node's endpoints only (none: dropped, so that load
    /// balancers' health checks steer clients to nodes that have some).
    pub const EXTERNAL: u8 = 1;
}

/// Key of [`SVC4_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    /// Frontend address (network order); 0 for NodePort frontends.
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// 0: the master entry; 1..: backend slots.
    pub slot: u16,
    pub proto: u8,
    /// See [`svc_scope`].
    pub scope: u8,
    pub _pad: [u8; 2],
}

/// Value of [`SVC4_MAP`]. In the master entry: `count` ready backends in slots 1..=count, and
/// `fb_count` serving-but-terminating ones after them, used only when `count` is 0 (KEP-1669);
/// in a backend slot: only `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Svc4Value {
    pub backend_id: u32,
    pub count: u16,
    pub fb_count: u16,
    pub rev_nat_id: u16,
    /// See [`svc_flags`].
    pub flags: u16,
    /// sessionAffinity timeout in seconds.
    pub affinity_s: u32,
}

/// Value of [`BACKENDS4_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend4 {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// 0 active, 1 terminating.
    pub state: u8,
}

/// Key of [`SOCK_REVNAT4_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    /// The backend (network order), as the socket sees its peer.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of [`SOCK_REVNAT4_MAP`]: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: u32,
    pub port: u16,
    pub rev_nat_id: u16,
}

/// Key of [`AFFINITY4_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Key {
    /// The client's network namespace cookie.
    pub client: u64,
    pub rev_nat_id: u16,
    pub _pad: [u8; 6],
}

/// Value of [`AFFINITY4_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity4Value {
    /// `bpf_ktime_get_ns` of the last connection.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// Index into [`SOCK_STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockStat {
    /// A connect or send to a frontend was sent to a backend.
    Translated = 0,
    /// A frontend without any usable backend: refused (EPERM to the caller).
    NoBackend = 1,
    /// A reply or getpeername was shown the frontend address.
    Reversed = 2,
    /// A session-affinity entry picked the backend.
    AffinityHit = 3,
}

impl SockStat {
    pub const COUNT: u32 = 4;
    pub const ALL: [SockStat; Self::COUNT as usize] = [
        SockStat::Translated,
        SockStat::NoBackend,
        SockStat::Reversed,
        SockStat::AffinityHit,
    ];
}

// ---------------------------------------------------------------------------------------------
// North-south: NodePort and LoadBalancer traffic arriving from outside the node, translated by
// TC programs on the uplink. A flow to a local backend is DNAT-ed (the pod sees the client);
// a flow to a backend on another node is DNAT-ed and SNAT-ed to this node's address and sent
// straight out again, so replies come back through this node.

/// `NatKey` -> `NatValue` (LRU): per-flow translations, both directions.
pub const NAT4_MAP: &str = "FERRY_NAT4";
/// Array of one [`NodeConfig`].
pub const NODE_CONFIG_MAP: &str = "FERRY_NODE_CONFIG";
/// Per-CPU array of `u64` counters indexed by [`NsStat`].
pub const NS_STATS_MAP: &str = "FERRY_NS_STATS";
pub const NAT4_MAX_ENTRIES: u32 = 262144;
pub const PROG_FROM_UPLINK: &str = "ferry_from_uplink";
pub const PROG_TO_UPLINK: &str = "ferry_to_uplink";
/// The XDP fast path on the uplink (`--lb-acceleration`).
pub const PROG_XDP_UPLINK: &str = "ferry_xdp_uplink";

/// Per-CPU hash map `u32` rev-NAT id (a frontend's, see [`Svc4Value::rev_nat_id`]) ->
/// [`SvcStats`]: what each service frontend carried on this node.
pub const SVC_STATS_MAP: &str = "FERRY_SVC_STATS";
pub const SVC_STATS_MAX_ENTRIES: u32 = 65536;

/// Value of [`SVC_STATS_MAP`] (one per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcStats {
    /// Connections and datagrams sent to the service from this node (socket hooks), and new
    /// flows from outside (TC).
    pub flows: u64,
    /// Packets of flows from outside translated by TC, both directions.
    pub packets: u64,
    /// Their bytes (`skb->len`).
    pub bytes: u64,
}

/// `u32` address (network order) -> [`L2Announce`]: LoadBalancer addresses this node announces
/// on its uplink: `ferry_from_uplink` answers ARP requests for them (L2 announcement, as
/// MetalLB's L2 mode and Cilium's L2 announcements do).
pub const L2_ANNOUNCE4_MAP: &str = "FERRY_L2_ANNOUNCE4";
pub const L2_ANNOUNCE4_MAX_ENTRIES: u32 = 4096;

/// Value of [`L2_ANNOUNCE4_MAP`]: the MAC address ARP replies give.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Announce {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// `Svc4Key` (a master entry's key, slot 0) -> [`Maglev4Value`]: the Maglev lookup table of a
/// north-south frontend, so that every node picks the same backend for a flow and a backend
/// change moves few flows (hash table without preallocation: only frontends that have one use
/// memory).
pub const MAGLEV4_MAP: &str = "FERRY_MAGLEV4";
pub const MAGLEV4_MAX_ENTRIES: u32 = 16384;
/// Slots of a Maglev table: a prime.
pub const MAGLEV_TABLE_SIZE: usize = 4093;

/// Value of [`MAGLEV4_MAP`]: slot -> backend id ([`BACKENDS4_MAP`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Maglev4Value {
    pub backends: [u32; MAGLEV_TABLE_SIZE],
}

/// [`NatKey::dir`]: a packet of the client's direction, or a reply.
pub mod nat_dir {
    pub const FORWARD: u8 = 0;
    pub const REPLY: u8 = 1;
}

/// Bits of [`NatValue::flags`].
pub mod nat_flags {
    /// The backend is on another node: the packet leaves again through the uplink.
    pub const REMOTE: u16 = 1;
    /// A TCP FIN or RST passed (cleared by a new SYN): the agent's sweep expires the entry
    /// sooner.
    pub const CLOSING: u16 = 2;
    /// A pod's own connection to outside the cluster, SNAT-ed to the node's address
    /// (masquerade): no service backend behind it.
    pub const MASQ: u16 = 4;
}

/// `Frag4Key` -> `Frag4Ports` (LRU, not pinned): the ports of IPv4 datagrams being received
/// in fragments, recorded from the first fragment (the only one with the L4 header) so the
/// others are translated like it. Fragments arriving before their first one pass untranslated.
pub const FRAG4_MAP: &str = "FERRY_FRAG4";
pub const FRAG4_MAX_ENTRIES: u32 = 8192;

/// Key of [`FRAG4_MAP`]: a fragmented datagram as it arrives (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frag4Key {
    pub saddr: u32,
    pub daddr: u32,
    /// The IP identification field shared by the fragments.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`FRAG4_MAP`] (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frag4Ports {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(core::mem::size_of::<Frag4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Frag4Ports>() == 4);

/// Key of [`NAT4_MAP`]: a packet's tuple as it arrives (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

/// Value of [`NAT4_MAP`]: the tuple to rewrite the packet to (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub flags: u16,
    /// The frontend's rev-NAT id (its master entry's), for [`SVC_STATS_MAP`]; 0: unknown.
    pub svc: u16,
    /// When a packet last used the entry: seconds of `bpf_ktime_get_ns` (CLOCK_MONOTONIC),
    /// for the agent's conntrack sweep.
    pub seen: u32,
}

/// Value of [`NODE_CONFIG_MAP`] (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The address SNAT-ed flows leave with.
    pub node_ip: u32,
    /// This node's pod CIDR: backends inside it are local.
    pub pod_net: u32,
    pub pod_mask: u32,
    /// Set once the agent wrote this entry; the programs pass everything before.
    pub ready: u32,
    /// The cluster's pod network (all nodes' pod CIDRs): traffic of this node's pods to
    /// anywhere else leaving through the uplink is masqueraded, when `masquerade` is set.
    pub cluster_net: u32,
    pub cluster_mask: u32,
    pub masquerade: u32,
}

/// Index into [`NS_STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsStat {
    /// A new flow to a backend on this node.
    NewLocal = 0,
    /// A new flow to a backend on another node (SNAT).
    NewRemote = 1,
    /// A packet of a known flow, client to backend.
    Forward = 2,
    /// A reply translated back to the client.
    Reply = 3,
    /// A frontend without usable backends: dropped.
    NoBackend = 4,
    /// No route or neighbour for a redirected packet: dropped.
    FibFailed = 5,
    /// No free SNAT port: dropped.
    NatExhausted = 6,
    /// A packet the XDP fast path translated and sent back out of the uplink (also counted
    /// under `NewRemote`, `Forward` or `Reply`).
    XdpTx = 7,
    /// A packet to a frontend without usable backends that the XDP fast path dropped (also
    /// counted under `NoBackend`).
    XdpDrop = 8,
    /// An ICMP error (destination unreachable, fragmentation needed, time exceeded, parameter
    /// problem) about a translated flow, translated to match what its receiver sent.
    IcmpError = 9,
    /// A client's packet too big for the route to its backend (e.g. into a VXLAN tunnel),
    /// answered with "fragmentation needed" from the frontend address.
    FragNeeded = 10,
    /// A new connection of a pod to outside the cluster, masqueraded to the node's address.
    Masquerade = 11,
}

impl NsStat {
    pub const COUNT: u32 = 12;
    pub const ALL: [NsStat; Self::COUNT as usize] = [
        NsStat::NewLocal,
        NsStat::NewRemote,
        NsStat::Forward,
        NsStat::Reply,
        NsStat::NoBackend,
        NsStat::FibFailed,
        NsStat::NatExhausted,
        NsStat::XdpTx,
        NsStat::XdpDrop,
        NsStat::IcmpError,
        NsStat::FragNeeded,
        NsStat::Masquerade,
    ];
}

const _: () = assert!(core::mem::size_of::<Maglev4Value>() == 4 * MAGLEV_TABLE_SIZE);
const _: () = assert!(core::mem::size_of::<SvcStats>() == 24);
const _: () = assert!(core::mem::size_of::<L2Announce>() == 8);
const _: () = assert!(core::mem::size_of::<NatKey>() == 16);
const _: () = assert!(core::mem::size_of::<NatValue>() == 20);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 28);
const _: () = assert!(core::mem::size_of::<NsStat>() == 4);

const _: () = assert!(core::mem::size_of::<Svc4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Svc4Value>() == 16);
const _: () = assert!(core::mem::size_of::<Backend4>() == 8);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);
const _: () = assert!(core::mem::size_of::<Affinity4Key>() == 16);
const _: () = assert!(core::mem::size_of::<Affinity4Value>() == 16);
const _: () = assert!(core::mem::size_of::<SockStat>() == 4);

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size asserts above).
    unsafe impl aya::Pod for super::Svc4Key {}
    unsafe impl aya::Pod for super::Svc4Value {}
    unsafe impl aya::Pod for super::Maglev4Value {}
    unsafe impl aya::Pod for super::SvcStats {}
    unsafe impl aya::Pod for super::L2Announce {}
    unsafe impl aya::Pod for super::Backend4 {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::Affinity4Key {}
    unsafe impl aya::Pod for super::Affinity4Value {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::NodeConfig {}
}

#[cfg(feature = "user")]
mod user_tc {
    // SAFETY: all three are #[repr(C)], contain only integers, have no implicit padding (checked
    // by the size asserts above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::DenyKey {}
    unsafe impl aya::Pod for super::DenyValue {}
    unsafe impl aya::Pod for super::PacketCounter {}
}
