//! Ferry's eBPF datapath programs, linked by bpf-linker into one BPF object that the agent
//! embeds and loads (`ferry_agent::datapath`).
//!
//! Owns the packet-level decisions only. Programs must never fail open silently: every packet
//! gets an explicit verdict, every verdict is counted in `FERRY_VERDICT_STATS`, and every drop
//! is counted under exactly one `DropReason` in `FERRY_DROP_REASONS`. Map layouts come from
//! `ferry-ebpf-common`; never define a shared type here.
//!
//! The crate also compiles on the host (so `cargo clippy --workspace` checks it): only the
//! panic handler is BPF-only, and the host gets a `main` that refuses to run.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, bpf_fib_lookup as FibParams},
    helpers::{
        bpf_csum_diff, bpf_fib_lookup, bpf_get_netns_cookie, bpf_get_prandom_u32,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh,
        bpf_skb_change_tail,
    },
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use ferry_ebpf_common::{
    AFFINITY4_MAX_ENTRIES, Affinity4Key, Affinity4Value, BACKENDS4_MAX_ENTRIES, Backend4,
    DENY_PORTS_MAX_ENTRIES, DenyKey, DenyValue, DropReason, FRAG4_MAX_ENTRIES, Frag4Key,
    Frag4Ports, L2_ANNOUNCE4_MAX_ENTRIES, L2Announce, MAGLEV_TABLE_SIZE, MAGLEV4_MAX_ENTRIES,
    Maglev4Value, NAT4_MAX_ENTRIES, NODE_IPS4_MAX_ENTRIES, NatKey, NatValue, NodeConfig, NsStat,
    PEER_IPS4_MAX_ENTRIES, PacketCounter, SOCK_REVNAT4_MAX_ENTRIES, SVC_STATS_MAX_ENTRIES,
    SVC4_MAX_ENTRIES, SockRevKey, SockRevValue, SockStat, Svc4Key, Svc4Value, SvcStats, Verdict,
    ipproto, nat_dir, nat_flags, svc_flags, svc_scope,
};

#[map]
static FERRY_DENY_PORTS: HashMap<DenyKey, DenyValue> =
    HashMap::with_max_entries(DENY_PORTS_MAX_ENTRIES, 0);

#[map]
static FERRY_VERDICT_STATS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(Verdict::COUNT, 0);

#[map]
static FERRY_DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

// From linux/pkt_cls.h. Not aya_ebpf::bindings: their integer type differs per target arch
// (u32 on the host, i32 on bpf), so no single cast is clean on both.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

const ETH_HLEN: usize = 14;
const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const IPV4_FRAG_OFF_OFFSET: usize = 6;
const IPV4_PROTO_OFFSET: usize = 9;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const L4_DST_PORT_OFFSET: usize = 2;

enum Decision {
    Pass,
    Drop(DropReason),
}

/// TC classifier (ingress or egress): drops IPv4 TCP/UDP packets whose destination port is in
/// `FERRY_DENY_PORTS`, passes everything else.
#[classifier]
pub fn ferry_tc_deny(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    match decide(&ctx) {
        Decision::Pass => {
            count_verdict(Verdict::Pass, len);
            TC_ACT_OK
        }
        Decision::Drop(reason) => {
            count_verdict(Verdict::Drop, len);
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

fn decide(ctx: &TcContext) -> Decision {
    // Shorter than an Ethernet header: not an IP packet, nothing for this program to judge.
    let Ok(eth_type) = ctx.load::<u16>(ETH_TYPE_OFFSET) else {
        return Decision::Pass;
    };
    if u16::from_be(eth_type) != ETH_P_IP {
        return Decision::Pass;
    }
    // From here on the frame claims to be IPv4: a header we cannot read is malformed, and
    // passing it would let a truncated packet dodge the deny list.
    let Ok(version_ihl) = ctx.load::<u8>(ETH_HLEN) else {
        return Decision::Drop(DropReason::Malformed);
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Decision::Drop(DropReason::Malformed);
    }
    let (Ok(proto), Ok(frag_off)) = (
        ctx.load::<u8>(ETH_HLEN + IPV4_PROTO_OFFSET),
        ctx.load::<u16>(ETH_HLEN + IPV4_FRAG_OFF_OFFSET),
    ) else {
        return Decision::Drop(DropReason::Malformed);
    };
    if proto != ipproto::TCP && proto != ipproto::UDP {
        return Decision::Pass;
    }
    // Non-first fragments carry no L4 header. The first fragment carries the ports and is
    // dropped if denied, so the datagram can never be reassembled.
    if u16::from_be(frag_off) & IPV4_FRAG_OFFSET_MASK != 0 {
        return Decision::Pass;
    }
    let Ok(dst_port) = ctx.load::<u16>(ETH_HLEN + ihl + L4_DST_PORT_OFFSET) else {
        return Decision::Drop(DropReason::Malformed);
    };
    let key = DenyKey::new(u16::from_be(dst_port), proto);
    if FERRY_DENY_PORTS.get_ptr(key).is_some() {
        Decision::Drop(DropReason::DeniedPort)
    } else {
        Decision::Pass
    }
}

#[inline(always)]
fn count_verdict(verdict: Verdict, len: u64) {
    if let Some(counter) = FERRY_VERDICT_STATS.get_ptr_mut(verdict as u32) {
        // SAFETY: the pointer is this CPU's slot of an in-range array entry; BPF programs run
        // with migration disabled, so no other writer touches this slot concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(counter) = FERRY_DROP_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: as in `count_verdict`.
        unsafe { *counter += 1 };
    }
}

// ---------------------------------------------------------------------------------------------
// Socket-level service load balancing: the backend is chosen when the application connects (or
// sends a datagram), so no packet of the flow is ever rewritten. See ferry-ebpf-common for the
// map layout.

#[map]
static FERRY_SVC4: HashMap<Svc4Key, Svc4Value> = HashMap::with_max_entries(SVC4_MAX_ENTRIES, 0);

#[map]
static FERRY_BACKENDS4: HashMap<u32, Backend4> =
    HashMap::with_max_entries(BACKENDS4_MAX_ENTRIES, 0);

#[map]
static FERRY_SOCK_REVNAT4: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(SOCK_REVNAT4_MAX_ENTRIES, 0);

#[map]
static FERRY_AFFINITY4: LruHashMap<Affinity4Key, Affinity4Value> =
    LruHashMap::with_max_entries(AFFINITY4_MAX_ENTRIES, 0);

#[map]
static FERRY_NODE_IPS4: HashMap<u32, u32> = HashMap::with_max_entries(NODE_IPS4_MAX_ENTRIES, 0);

#[map]
static FERRY_SOCK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SockStat::COUNT, 0);

#[map]
static FERRY_SVC_STATS: PerCpuHashMap<u32, SvcStats> =
    PerCpuHashMap::with_max_entries(SVC_STATS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Adds to service frontend `svc`'s counters on this CPU (`svc` 0: no frontend known).
#[inline(always)]
fn count_svc(svc: u16, flows: u64, packets: u64, bytes: u64) {
    if svc == 0 {
        return;
    }
    let key = u32::from(svc);
    match FERRY_SVC_STATS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of a live per-CPU map entry; nothing else writes it now.
        Some(v) => unsafe {
            (*v).flows += flows;
            (*v).packets += packets;
            (*v).bytes += bytes;
        },
        None => {
            let v = SvcStats {
                flows,
                packets,
                bytes,
            };
            // From a program, a per-CPU update sets this CPU's value (the others start at 0).
            let _ = FERRY_SVC_STATS.insert(&key, &v, u64::from(BPF_NOEXIST));
        }
    }
}

/// Verdicts of cgroup sock_addr programs: 1 lets the call proceed (with the rewritten address),
/// 0 refuses it (the caller gets EPERM).
const SOCK_ALLOW: i32 = 1;
const SOCK_REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn ferry_connect4(ctx: SockAddrContext) -> i32 {
    sock_forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn ferry_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_reverse(&ctx)
}

#[inline(always)]
fn count_sock(stat: SockStat) {
    if let Some(counter) = FERRY_SOCK_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: as in `count_verdict`.
        unsafe { *counter += 1 };
    }
}

/// A loopback address or one of this node's: NodePort frontends (address 0) apply.
#[inline(always)]
fn is_node_addr(addr: u32) -> bool {
    // Network order in memory: on a little-endian machine the first octet is the low byte.
    (u32::from_be(addr) >> 24) == 127 || FERRY_NODE_IPS4.get_ptr(addr).is_some()
}

#[inline(always)]
fn sock_forward(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr; these are 4-byte context loads.
    let (proto, addr, user_port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let proto = proto as u8;
    if proto != ipproto::TCP && proto != ipproto::UDP {
        return SOCK_ALLOW;
    }
    let port = user_port as u16;
    let mut key = Svc4Key {
        addr,
        port,
        slot: 0,
        proto,
        scope: svc_scope::INTERNAL,
        _pad: [0; 2],
    };
    let svc = match FERRY_SVC4.get_ptr(&key) {
        // SAFETY: a pointer to a live map value of the right type.
        Some(v) => unsafe { *v },
        None => {
            if !is_node_addr(addr) {
                return SOCK_ALLOW;
            }
            key.addr = 0;
            match FERRY_SVC4.get_ptr(&key) {
                // SAFETY: as above.
                Some(v) => unsafe { *v },
                None => return SOCK_ALLOW,
            }
        }
    };
    // Ready backends, else (KEP-1669) serving-but-terminating ones, else refuse.
    let n = if svc.count > 0 {
        svc.count
    } else {
        svc.fb_count
    };
    if n == 0 {
        count_sock(SockStat::NoBackend);
        return SOCK_REFUSE;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let affinity = svc.flags & svc_flags::AFFINITY != 0;
    let akey = Affinity4Key {
        // SAFETY: a helper allowed for sock_addr programs, given this program's context.
        client: if affinity {
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
        } else {
            0
        },
        rev_nat_id: svc.rev_nat_id,
        _pad: [0; 6],
    };
    let mut backend_id = 0u32;
    if affinity && let Some(a) = FERRY_AFFINITY4.get_ptr(&akey) {
        // SAFETY: a live map value.
        let a = unsafe { *a };
        if now.wrapping_sub(a.last_used_ns) < u64::from(svc.affinity_s) * 1_000_000_000
            && FERRY_BACKENDS4.get_ptr(a.backend_id).is_some()
        {
            backend_id = a.backend_id;
            count_sock(SockStat::AffinityHit);
        }
    }
    if backend_id == 0 {
        // SAFETY: a helper without arguments.
        let pick = unsafe { bpf_get_prandom_u32() } % u32::from(n);
        key.slot = pick as u16 + 1;
        let Some(slot) = FERRY_SVC4.get_ptr(&key) else {
            count_sock(SockStat::NoBackend);
            return SOCK_REFUSE;
        };
        // SAFETY: a live map value.
        backend_id = unsafe { (*slot).backend_id };
    }
    let Some(be) = FERRY_BACKENDS4.get_ptr(backend_id) else {
        count_sock(SockStat::NoBackend);
        return SOCK_REFUSE;
    };
    // SAFETY: a live map value.
    let be = unsafe { *be };
    if affinity {
        let v = Affinity4Value {
            last_used_ns: now,
            backend_id,
            _pad: 0,
        };
        let _ = FERRY_AFFINITY4.insert(&akey, &v, 0);
    }
    // SAFETY: valid context; writes of user_ip4 / user_port are what these hooks allow.
    let cookie = unsafe {
        (*sa).user_ip4 = be.addr;
        (*sa).user_port = u32::from(be.port);
        bpf_get_socket_cookie(ctx.as_ptr())
    };
    let rkey = SockRevKey {
        cookie,
        addr: be.addr,
        port: be.port,
        _pad: 0,
    };
    let rval = SockRevValue {
        addr,
        port,
        rev_nat_id: svc.rev_nat_id,
    };
    let _ = FERRY_SOCK_REVNAT4.insert(&rkey, &rval, 0);
    count_sock(SockStat::Translated);
    count_svc(svc.rev_nat_id, 1, 0, 0);
    SOCK_ALLOW
}

/// Replies (recvmsg) and getpeername show the frontend the socket was sent to, not the backend.
#[inline(always)]
fn sock_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context, 4-byte loads, and a helper allowed here.
    let (addr, user_port, cookie) = unsafe {
        (
            (*sa).user_ip4,
            (*sa).user_port,
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let key = SockRevKey {
        cookie,
        addr,
        port: user_port as u16,
        _pad: 0,
    };
    if let Some(v) = FERRY_SOCK_REVNAT4.get_ptr(&key) {
        // SAFETY: a live map value; writes allowed by these hooks.
        unsafe {
            let v = *v;
            (*sa).user_ip4 = v.addr;
            (*sa).user_port = u32::from(v.port);
        }
        count_sock(SockStat::Reversed);
    }
    SOCK_ALLOW
}

// ---------------------------------------------------------------------------------------------
// North-south: NodePort and LoadBalancer traffic from outside, at TC on the uplink.

#[map]
static FERRY_NAT4: LruHashMap<NatKey, NatValue> = LruHashMap::with_max_entries(NAT4_MAX_ENTRIES, 0);

#[map]
static FERRY_NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map]
static FERRY_PEER_IPS4: HashMap<u32, u32> = HashMap::with_max_entries(PEER_IPS4_MAX_ENTRIES, 0);

/// BPF_F_NO_PREALLOC: 16 KiB values, allocated only for the frontends that have a table.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static FERRY_MAGLEV4: HashMap<Svc4Key, Maglev4Value> =
    HashMap::with_max_entries(MAGLEV4_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static FERRY_NS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NsStat::COUNT, 0);

const TC_ACT_REDIRECT: i32 = 7;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;
/// SNAT source ports.
const SNAT_PORT_MIN: u32 = 32768;
const SNAT_PORT_SPAN: u32 = 32768;
const SNAT_TRIES: u32 = 8;

#[inline(always)]
fn count_ns(stat: NsStat) {
    if let Some(counter) = FERRY_NS_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: as in `count_verdict`.
        unsafe { *counter += 1 };
    }
}

/// An IPv4 TCP or UDP packet's tuple (network order) and where its L4 header is.
struct Pkt {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    l4: usize,
    tcp_flags: u8,
    /// A fragment after the first: it has no L4 header (the ports are the first fragment's).
    later_fragment: bool,
}

#[map]
static FERRY_FRAG4: LruHashMap<Frag4Key, Frag4Ports> =
    LruHashMap::with_max_entries(FRAG4_MAX_ENTRIES, 0);

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// `None` for anything but an IPv4 TCP or UDP packet, or a fragment of one whose first
/// fragment was seen (passed untouched). A first fragment's ports are recorded in
/// `FERRY_FRAG4` for the fragments that follow.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Pkt> {
    let eth_type: u16 = ctx.load(ETH_TYPE_OFFSET).ok()?;
    if u16::from_be(eth_type) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + IPV4_PROTO_OFFSET).ok()?;
    if proto != ipproto::TCP && proto != ipproto::UDP {
        return None;
    }
    let frag = u16::from_be(ctx.load(ETH_HLEN + IPV4_FRAG_OFF_OFFSET).ok()?);
    let saddr: u32 = ctx.load(IP_SRC_OFF).ok()?;
    let daddr: u32 = ctx.load(IP_DST_OFF).ok()?;
    let l4 = ETH_HLEN + ihl;
    // Built whether or not the packet is a fragment: an `Option` here leaves the payload of
    // `None` uninitialized, and the verifier refuses a register LLVM copies from it.
    let is_fragment = frag & (IP_MF | IP_OFFSET_MASK) != 0;
    let fragment = Frag4Key {
        saddr,
        daddr,
        id: ctx.load(ETH_HLEN + 4).unwrap_or(0),
        proto,
        _pad: 0,
    };
    if frag & IP_OFFSET_MASK != 0 {
        // SAFETY: a live map value, copied out.
        let ports = unsafe { *FERRY_FRAG4.get_ptr(&fragment)? };
        return Some(Pkt {
            saddr,
            daddr,
            sport: ports.sport,
            dport: ports.dport,
            proto,
            l4,
            tcp_flags: 0,
            later_fragment: true,
        });
    }
    let tcp_flags = if proto == ipproto::TCP {
        ctx.load::<u8>(l4 + 13).ok()?
    } else {
        0
    };
    let p = Pkt {
        saddr,
        daddr,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + L4_DST_PORT_OFFSET).ok()?,
        proto,
        l4,
        tcp_flags,
        later_fragment: false,
    };
    if is_fragment {
        let ports = Frag4Ports {
            sport: p.sport,
            dport: p.dport,
        };
        let _ = FERRY_FRAG4.insert(&fragment, &ports, 0);
    }
    Some(p)
}

/// Replaces the IPv4 address at `off` (`old` to `new`), fixing the IP header checksum at
/// `ip_csum` and, when given, an L4 checksum at `l4.0` (`l4.1`: `bpf_l4_csum_replace` flags
/// other than the size).
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    ip_csum: usize,
    off: usize,
    old: u32,
    new: u32,
    l4: Option<(usize, u64)>,
) -> Result<(), i64> {
    if new == old {
        return Ok(());
    }
    ctx.l3_csum_replace(ip_csum, u64::from(old), u64::from(new), 4)?;
    if let Some((csum, flags)) = l4 {
        ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 4)?;
    }
    ctx.store(off, &new, 0)
}

/// Replaces the port at `off` (`old` to `new`), fixing the checksum at `csum` (`flags` as in
/// [`set_addr`]).
#[inline(always)]
fn set_port(
    ctx: &TcContext,
    off: usize,
    old: u16,
    new: u16,
    csum: usize,
    flags: u64,
) -> Result<(), i64> {
    if new == old {
        return Ok(());
    }
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 2)?;
    ctx.store(off, &new, 0)
}

/// Rewrites the packet's tuple to `v`, fixing the IP and L4 checksums incrementally (a
/// fragment after the first has only the IP header to rewrite: the first one's L4 checksum
/// covers the whole datagram).
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Pkt, v: &NatValue) -> Result<(), i64> {
    let l4 = (!p.later_fragment).then(|| {
        if p.proto == ipproto::TCP {
            (p.l4 + 16, 0)
        } else {
            (p.l4 + 6, BPF_F_MARK_MANGLED_0)
        }
    });
    let pseudo = l4.map(|(csum, flags)| (csum, flags | BPF_F_PSEUDO_HDR));
    set_addr(ctx, IP_CSUM_OFF, IP_SRC_OFF, p.saddr, v.saddr, pseudo)?;
    set_addr(ctx, IP_CSUM_OFF, IP_DST_OFF, p.daddr, v.daddr, pseudo)?;
    if let Some((csum, flags)) = l4 {
        set_port(ctx, p.l4, p.sport, v.sport, csum, flags)?;
        set_port(
            ctx,
            p.l4 + L4_DST_PORT_OFFSET,
            p.dport,
            v.dport,
            csum,
            flags,
        )?;
    }
    Ok(())
}

/// Where a packet translated to `v` leaves: the FIB lookup from the interface the packet came
/// in on (it must have forwarding on); any route matches, so routes through a tunnel device
/// are found too (an output lookup would pin the outgoing interface to `ifindex`).
enum Route {
    /// The outgoing interface (its neighbour may still need resolving).
    Via(u32),
    /// The route's MTU is smaller than the packet.
    TooBig(u16),
    /// No route.
    None,
}

#[inline(always)]
fn route(ctx: &TcContext, v: &NatValue, proto: u8) -> Route {
    // SAFETY: an all-zero bpf_fib_lookup is valid; the union fields set are the IPv4 ones.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.sport = v.sport;
    params.dport = v.dport;
    // SAFETY: reading the context's ifindex.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Host byte order: the kernel compares it with the route's MTU.
    params.__bindgen_anon_1.tot_len = (ctx.len() as u16).saturating_sub(ETH_HLEN as u16);
    params.__bindgen_anon_3.ipv4_src = v.saddr;
    params.__bindgen_anon_4.ipv4_dst = v.daddr;
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match r {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Route::Via(params.ifindex),
        // SAFETY: the kernel wrote the MTU into the union for this result.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            Route::TooBig(unsafe { params.__bindgen_anon_1.mtu_result })
        }
        _ => Route::None,
    }
}

/// Sends a packet out of `ifindex` towards its (translated) destination, the next hop's
/// neighbour resolved by the kernel, without a second trip through the stack.
#[inline(always)]
fn send_out(ifindex: u32) -> i32 {
    // SAFETY: no neighbour parameters: the helper resolves the next hop itself.
    let r = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if r == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT
    } else {
        count_ns(NsStat::FibFailed);
        count_drop(DropReason::NoRoute);
        TC_ACT_SHOT
    }
}

#[inline(always)]
fn no_route() -> i32 {
    count_ns(NsStat::FibFailed);
    count_drop(DropReason::NoRoute);
    TC_ACT_SHOT
}

/// Translates `p` to `v` and sends it out towards its new destination. A packet too big for
/// that route is answered with "fragmentation needed" instead, about the packet as its sender
/// sent it (the route is looked up before the packet is rewritten).
#[inline(always)]
fn translate_out(ctx: &TcContext, p: &Pkt, v: &NatValue) -> i32 {
    match route(ctx, v, p.proto) {
        Route::Via(ifindex) => {
            if rewrite(ctx, p, v).is_err() {
                count_drop(DropReason::Malformed);
                return TC_ACT_SHOT;
            }
            send_out(ifindex)
        }
        Route::TooBig(mtu) => frag_needed(ctx, p, mtu),
        Route::None => no_route(),
    }
}

const ICMP_FRAG_NEEDED: u8 = 4;
const IP_DF: u16 = 0x4000;
/// An ICMP "fragmentation needed": Ethernet, IP, ICMP header, the quoted IP header and 8 bytes.
const FRAG_NEEDED_LEN: u32 = (ETH_HLEN + 20 + 8 + 28) as u32;

/// Turns `p` (as its sender sent it, through an option-less IP header) into the ICMP
/// "fragmentation needed, next-hop MTU `mtu`" its sender must get, from the address it sent to,
/// and sends it back out of the interface it came in on. Without DF the packet is dropped
/// (it is not fragmented here).
#[inline(always)]
fn frag_needed(ctx: &TcContext, p: &Pkt, mtu: u16) -> i32 {
    let too_big = || {
        count_drop(DropReason::TooBig);
        TC_ACT_SHOT
    };
    let Ok(frag) = ctx.load::<u16>(ETH_HLEN + IPV4_FRAG_OFF_OFFSET) else {
        return too_big();
    };
    if u16::from_be(frag) & IP_DF == 0 || p.l4 != ETH_HLEN + 20 || p.later_fragment {
        return too_big();
    }
    // The quoted packet (its IP header and first 8 bytes) and the Ethernet addresses, taken
    // before the packet is cut.
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return too_big();
    };
    let Ok(quoted) = ctx.load::<[u8; 28]>(ETH_HLEN) else {
        return too_big();
    };
    // SAFETY: a helper for TC programs; shrinks the packet to the error's length.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, FRAG_NEEDED_LEN, 0) } != 0 {
        return too_big();
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    // IPv4: version/IHL, TOS, total length, id, flags/fragment, TTL 64, ICMP, checksum (later),
    // from the address the client sent to, to the client.
    let total = (FRAG_NEEDED_LEN - ETH_HLEN as u32) as u16;
    let mut ip = [0u32; 5];
    // SAFETY: 20 writable bytes.
    let ipb = unsafe { core::slice::from_raw_parts_mut(ip.as_mut_ptr().cast::<u8>(), 20) };
    ipb[0] = 0x45;
    ipb[2..4].copy_from_slice(&total.to_be_bytes());
    ipb[8] = 64;
    ipb[9] = IPPROTO_ICMP;
    ipb[12..16].copy_from_slice(&p.daddr.to_ne_bytes());
    ipb[16..20].copy_from_slice(&p.saddr.to_ne_bytes());
    // ICMP: type, code, checksum (later), unused, next-hop MTU, then the quoted bytes.
    let mut icmp = [0u32; 9];
    // SAFETY: 36 writable bytes.
    let icb = unsafe { core::slice::from_raw_parts_mut(icmp.as_mut_ptr().cast::<u8>(), 36) };
    icb[0] = ICMP_DEST_UNREACH;
    icb[1] = ICMP_FRAG_NEEDED;
    icb[6..8].copy_from_slice(&mtu.to_be_bytes());
    icb[8..36].copy_from_slice(&quoted);
    // SAFETY: the buffers are 20 and 36 bytes, multiples of 4 as the helper requires.
    let (ip_sum, icmp_sum) = unsafe {
        (
            bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr(), 20, 0),
            bpf_csum_diff(core::ptr::null_mut(), 0, icmp.as_mut_ptr(), 36, 0),
        )
    };
    if ip_sum < 0 || icmp_sum < 0 {
        return too_big();
    }
    let ip_csum = !csum_fold(ip_sum as u32);
    let icmp_csum = !csum_fold(icmp_sum as u32);
    let written = (|| -> Result<(), i64> {
        ctx.store(0, &eth, 0)?;
        ctx.store(ETH_HLEN, &ip, 0)?;
        ctx.store(IP_CSUM_OFF, &ip_csum, 0)?;
        ctx.store(ICMP_OFF, &icmp, 0)?;
        ctx.store(ICMP_CSUM_OFF, &icmp_csum, 0)?;
        Ok(())
    })();
    if written.is_err() {
        return too_big();
    }
    count_ns(NsStat::FragNeeded);
    // SAFETY: a valid skb; the ifindex is this program's interface.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper for TC programs; egress of the same interface.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
fn flow_hash(p: &Pkt) -> u32 {
    let h = p.saddr ^ (u32::from(p.sport) << 16 | u32::from(p.dport)) ^ p.daddr.rotate_left(7);
    h.wrapping_mul(0x9e37_79b1).rotate_left(13) ^ u32::from(p.proto)
}

#[inline(always)]
fn nat_key(p: &Pkt, dir: u8) -> NatKey {
    NatKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        dir,
        _pad: 0,
    }
}

#[map]
static FERRY_L2_ANNOUNCE4: HashMap<u32, L2Announce> =
    HashMap::with_max_entries(L2_ANNOUNCE4_MAX_ENTRIES, 0);

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Offsets in an Ethernet frame carrying an IPv4-over-Ethernet ARP packet.
const ARP_HDR: usize = ETH_HLEN; // htype(2) ptype(2) hlen(1) plen(1) oper(2)
const ARP_OPER: usize = ARP_HDR + 6;
const ARP_SHA: usize = ARP_HDR + 8;
const ARP_SPA: usize = ARP_HDR + 14;
const ARP_THA: usize = ARP_HDR + 18;
const ARP_TPA: usize = ARP_HDR + 24;

/// An ARP request for an address this node announces becomes the reply, sent back out of the
/// interface it came in on. `None`: not such a request (the stack sees it as usual).
#[inline(always)]
fn arp_reply(ctx: &TcContext) -> Option<i32> {
    let eth_type: u16 = ctx.load(ETH_TYPE_OFFSET).ok()?;
    if u16::from_be(eth_type) != ETH_P_ARP {
        return None;
    }
    let htype: u16 = ctx.load(ARP_HDR).ok()?;
    let ptype: u16 = ctx.load(ARP_HDR + 2).ok()?;
    let oper: u16 = ctx.load(ARP_OPER).ok()?;
    if u16::from_be(htype) != 1
        || u16::from_be(ptype) != ETH_P_IP
        || u16::from_be(oper) != ARP_REQUEST
    {
        return None;
    }
    let tpa: u32 = ctx.load(ARP_TPA).ok()?;
    // SAFETY: a live map value, copied out.
    let entry = unsafe { *FERRY_L2_ANNOUNCE4.get_ptr(&tpa)? };
    let sha: [u8; 6] = ctx.load(ARP_SHA).ok()?;
    let spa: u32 = ctx.load(ARP_SPA).ok()?;
    let written = (|| -> Result<(), i64> {
        ctx.store(0, &sha, 0)?; // Ethernet destination: the asker
        ctx.store(6, &entry.mac, 0)?; // source: this node
        ctx.store(ARP_OPER, &ARP_REPLY.to_be(), 0)?;
        ctx.store(ARP_SHA, &entry.mac, 0)?;
        ctx.store(ARP_SPA, &tpa, 0)?;
        ctx.store(ARP_THA, &sha, 0)?;
        ctx.store(ARP_TPA, &spa, 0)?;
        Ok(())
    })();
    if written.is_err() {
        return Some(TC_ACT_OK);
    }
    // SAFETY: a valid skb; the ifindex is this program's interface.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper for TC programs; egress of the same interface.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// Offsets in an ICMP error after an option-less outer IPv4 header.
const ICMP_OFF: usize = ETH_HLEN + 20;
const ICMP_CSUM_OFF: usize = ICMP_OFF + 2;
/// The offending packet's IP header, quoted in the error.
const INNER_IP: usize = ICMP_OFF + 8;
const INNER_IP_CSUM: usize = INNER_IP + 10;
const INNER_SRC: usize = INNER_IP + 12;
const INNER_DST: usize = INNER_IP + 16;
/// Its first 8 bytes of TCP or UDP (an option-less inner header): the ports.
const INNER_L4: usize = INNER_IP + 20;

/// An ICMP error (destination unreachable, which includes fragmentation needed, time exceeded,
/// parameter problem) about a packet of a translated flow, made to match the packet as its
/// sender knows it; without this, path MTU discovery and port-unreachable signals would die at
/// the translating node.
///
/// The quoted packet is looked up as a flow's translated form:
/// - a packet to the backend (the error comes from the backend's side, e.g. a hop with a
///   smaller MTU, or the backend itself): its flow's reply entry turns the quoted packet back
///   into the client's, and the error goes to the client; when the backend itself sent it, it
///   comes from the frontend address;
/// - a reply to the client (the error comes from the client's side): the forward entry turns
///   the quoted packet back into the backend's reply, and the error goes to the backend (from
///   this node, for a SNAT-ed flow).
///
/// Returns the verdict, or `None` when the packet is no such error (handled as usual). At
/// ingress (`redirect`) the error is sent on towards its new destination; at egress it
/// continues out of the uplink.
#[inline(always)]
fn icmp_error(ctx: &TcContext, redirect_out: bool) -> Option<i32> {
    let eth_type: u16 = ctx.load(ETH_TYPE_OFFSET).ok()?;
    if u16::from_be(eth_type) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let proto: u8 = ctx.load(ETH_HLEN + IPV4_PROTO_OFFSET).ok()?;
    if version_ihl != 0x45 || proto != IPPROTO_ICMP {
        return None;
    }
    let frag: u16 = ctx.load(ETH_HLEN + IPV4_FRAG_OFF_OFFSET).ok()?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let kind: u8 = ctx.load(ICMP_OFF).ok()?;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETERPROB {
        return None;
    }
    let inner_ihl: u8 = ctx.load(INNER_IP).ok()?;
    let inner_proto: u8 = ctx.load(INNER_IP + IPV4_PROTO_OFFSET).ok()?;
    if inner_ihl != 0x45 || (inner_proto != ipproto::TCP && inner_proto != ipproto::UDP) {
        return None;
    }
    let quoted = Pkt {
        saddr: ctx.load(INNER_SRC).ok()?,
        daddr: ctx.load(INNER_DST).ok()?,
        sport: ctx.load(INNER_L4).ok()?,
        dport: ctx.load(INNER_L4 + L4_DST_PORT_OFFSET).ok()?,
        proto: inner_proto,
        l4: INNER_L4,
        tcp_flags: 0,
        later_fragment: false,
    };
    let outer_src: u32 = ctx.load(IP_SRC_OFF).ok()?;
    let outer_dst: u32 = ctx.load(IP_DST_OFF).ok()?;
    // The flow's entry for the direction the quoted packet answers.
    let mut key = NatKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: quoted.dport,
        dport: quoted.sport,
        proto: inner_proto,
        dir: nat_dir::REPLY,
        _pad: 0,
    };
    let (v, to_client) = match FERRY_NAT4.get_ptr(&key) {
        // SAFETY: a live map value, copied out.
        Some(v) => (unsafe { *v }, true),
        None => {
            key.dir = nat_dir::FORWARD;
            // SAFETY: as above.
            (unsafe { *FERRY_NAT4.get_ptr(&key)? }, false)
        }
    };
    // The quoted packet as its sender sent it: the reverse of the entry's translation.
    let original = NatValue {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        flags: 0,
        svc: v.svc,
        seen: 0,
    };
    let (new_src, new_dst) = if to_client {
        let src = if outer_src == quoted.daddr {
            v.saddr
        } else {
            outer_src
        };
        (src, v.daddr)
    } else if v.flags & nat_flags::REMOTE != 0 {
        (v.saddr, v.daddr)
    } else {
        (outer_src, v.daddr)
    };
    if rewrite_icmp(
        ctx, &quoted, &original, outer_src, new_src, outer_dst, new_dst,
    )
    .is_err()
    {
        count_drop(DropReason::Malformed);
        return Some(TC_ACT_SHOT);
    }
    count_ns(NsStat::IcmpError);
    count_svc(v.svc, 0, 1, u64::from(ctx.len()));
    if !redirect_out || (!to_client && v.flags & nat_flags::REMOTE == 0) {
        // Egress, or an error for a local backend: the stack delivers it.
        return Some(TC_ACT_OK);
    }
    let out = NatValue {
        saddr: new_src,
        daddr: new_dst,
        sport: 0,
        dport: 0,
        flags: 0,
        svc: v.svc,
        seen: 0,
    };
    Some(match route(ctx, &out, IPPROTO_ICMP) {
        Route::Via(ifindex) => send_out(ifindex),
        Route::TooBig(_) => {
            count_drop(DropReason::TooBig);
            TC_ACT_SHOT
        }
        Route::None => no_route(),
    })
}

/// Rewrites an ICMP error: the outer addresses (IP checksum; ICMPv4 has no pseudo-header) and
/// the quoted packet's addresses and ports to `to` (its IP checksum, and the ICMP checksum,
/// which covers the quoted bytes including that IP checksum). The quoted L4 checksum is left
/// alone: receivers match errors to sockets by addresses and ports only.
#[inline(always)]
fn rewrite_icmp(
    ctx: &TcContext,
    quoted: &Pkt,
    to: &NatValue,
    old_src: u32,
    new_src: u32,
    old_dst: u32,
    new_dst: u32,
) -> Result<(), i64> {
    set_addr(ctx, IP_CSUM_OFF, IP_SRC_OFF, old_src, new_src, None)?;
    set_addr(ctx, IP_CSUM_OFF, IP_DST_OFF, old_dst, new_dst, None)?;
    let old_inner_csum: u16 = ctx.load(INNER_IP_CSUM)?;
    let icmp = Some((ICMP_CSUM_OFF, 0));
    set_addr(ctx, INNER_IP_CSUM, INNER_SRC, quoted.saddr, to.saddr, icmp)?;
    set_addr(ctx, INNER_IP_CSUM, INNER_DST, quoted.daddr, to.daddr, icmp)?;
    // The ICMP checksum covers the quoted IP checksum too.
    let new_inner_csum: u16 = ctx.load(INNER_IP_CSUM)?;
    if new_inner_csum != old_inner_csum {
        ctx.l4_csum_replace(
            ICMP_CSUM_OFF,
            u64::from(old_inner_csum),
            u64::from(new_inner_csum),
            2,
        )?;
    }
    set_port(ctx, INNER_L4, quoted.sport, to.sport, ICMP_CSUM_OFF, 0)?;
    set_port(
        ctx,
        INNER_L4 + L4_DST_PORT_OFFSET,
        quoted.dport,
        to.dport,
        ICMP_CSUM_OFF,
        0,
    )?;
    Ok(())
}

/// TCX ingress of the uplink: ARP requests for announced LoadBalancer addresses are answered;
/// replies of SNAT-ed flows go back to their client; packets of known flows are translated
/// again; a new flow to a NodePort or LoadBalancer frontend gets a backend.
#[classifier]
pub fn ferry_from_uplink(ctx: TcContext) -> i32 {
    let Some(cfg) = FERRY_NODE_CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    if cfg.ready == 0 {
        return TC_ACT_OK;
    }
    let cfg = *cfg;
    if let Some(verdict) = arp_reply(&ctx) {
        return verdict;
    }
    let Some(p) = parse(&ctx) else {
        return icmp_error(&ctx, true).unwrap_or(TC_ACT_OK);
    };
    let key = nat_key(&p, nat_dir::REPLY);
    if let Some(v) = nat_lookup(&key, &p) {
        if v.flags & nat_flags::MASQ != 0 {
            // A reply to a pod's own connection: back to the pod, through the stack.
            if rewrite(&ctx, &p, &v).is_err() {
                count_drop(DropReason::Malformed);
                return TC_ACT_SHOT;
            }
            return TC_ACT_OK;
        }
        count_ns(NsStat::Reply);
        count_svc(v.svc, 0, 1, u64::from(ctx.len()));
        return translate_out(&ctx, &p, &v);
    }
    let key = nat_key(&p, nat_dir::FORWARD);
    if let Some(v) = nat_lookup(&key, &p) {
        count_ns(NsStat::Forward);
        count_svc(v.svc, 0, 1, u64::from(ctx.len()));
        if v.flags & nat_flags::REMOTE != 0 {
            return translate_out(&ctx, &p, &v);
        }
        if rewrite(&ctx, &p, &v).is_err() {
            count_drop(DropReason::Malformed);
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK;
    }
    new_flow(&ctx, &p, &key, &cfg)
}

/// Seconds of CLOCK_MONOTONIC (what `NatValue::seen` holds).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// A flow's translation, its entry marked as used now for the agent's conntrack sweep, and as
/// closing after a TCP FIN or RST (a new SYN on the same tuple opens it again).
#[inline(always)]
fn nat_lookup(key: &NatKey, p: &Pkt) -> Option<NatValue> {
    let v = FERRY_NAT4.get_ptr_mut(key)?;
    let now = now_s();
    // SAFETY: a live map value; other CPUs only store the same fields the same way.
    unsafe {
        if (*v).seen != now {
            (*v).seen = now;
        }
        if p.proto == ipproto::TCP {
            let flags = (*v).flags;
            if p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
                if flags & nat_flags::CLOSING == 0 {
                    (*v).flags = flags | nat_flags::CLOSING;
                }
            } else if p.tcp_flags & TCP_FLAG_SYN != 0 && flags & nat_flags::CLOSING != 0 {
                (*v).flags = flags & !nat_flags::CLOSING;
            }
        }
        Some(*v)
    }
}

/// Where a new flow to `p`'s destination goes.
enum Frontend {
    /// Not a NodePort, LoadBalancer or external address of this node: not ours.
    NotOurs,
    /// A frontend without usable backends (for externalTrafficPolicy Local: on this node).
    NoBackend,
    /// The frontend's master key and entry, and the backend chosen for the flow.
    Backend(Svc4Value, Backend4),
}

/// The frontend a new flow from outside reaches, and the backend it gets: from the Maglev
/// table, or the slots when the frontend has none. Pure lookups, no state is written, so the
/// XDP fast path and TC make the same choice for the same packet.
#[inline(always)]
fn pick_backend(p: &Pkt) -> Frontend {
    let mut skey = Svc4Key {
        addr: p.daddr,
        port: p.dport,
        slot: 0,
        proto: p.proto,
        scope: svc_scope::INTERNAL,
        _pad: [0; 2],
    };
    let mut svc = match FERRY_SVC4.get_ptr(&skey) {
        // SAFETY: a live map value.
        Some(v) => unsafe { *v },
        None => {
            if FERRY_NODE_IPS4.get_ptr(p.daddr).is_none() {
                return Frontend::NotOurs;
            }
            skey.addr = 0;
            match FERRY_SVC4.get_ptr(&skey) {
                // SAFETY: a live map value.
                Some(v) => unsafe { *v },
                None => return Frontend::NotOurs,
            }
        }
    };
    // externalTrafficPolicy: Local: traffic from outside gets this node's endpoints only.
    if svc.flags & svc_flags::HAS_EXTERNAL != 0 {
        skey.scope = svc_scope::EXTERNAL;
        match FERRY_SVC4.get_ptr(&skey) {
            // SAFETY: a live map value.
            Some(v) => svc = unsafe { *v },
            None => return Frontend::NoBackend,
        }
    }
    let n = if svc.count > 0 {
        svc.count
    } else {
        svc.fb_count
    };
    if n == 0 {
        return Frontend::NoBackend;
    }
    let hash = flow_hash(p);
    let backend_id = match maglev_pick(&skey, &svc, hash) {
        Some(id) => id,
        None => {
            skey.slot = (hash % u32::from(n)) as u16 + 1;
            let Some(slot) = FERRY_SVC4.get_ptr(&skey) else {
                return Frontend::NoBackend;
            };
            // SAFETY: a live map value.
            unsafe { (*slot).backend_id }
        }
    };
    match FERRY_BACKENDS4.get_ptr(backend_id) {
        // SAFETY: a live map value.
        Some(be) => Frontend::Backend(svc, unsafe { *be }),
        None => Frontend::NoBackend,
    }
}

/// Whether `p` may start a flow: a TCP SYN (without ACK), or any UDP datagram.
#[inline(always)]
fn starts_flow(p: &Pkt) -> bool {
    p.proto != ipproto::TCP || (p.tcp_flags & TCP_FLAG_SYN != 0 && p.tcp_flags & TCP_FLAG_ACK == 0)
}

/// Replies of a flow become the frontend again, to the client.
#[inline(always)]
fn reply_value(p: &Pkt, svc: &Svc4Value) -> NatValue {
    NatValue {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        flags: 0,
        svc: svc.rev_nat_id,
        seen: now_s(),
    }
}

/// Records a new flow to a backend on this node (DNAT only: the pod sees the client; its
/// replies leave through `ferry_to_uplink`) and returns the forward translation.
#[inline(always)]
fn install_local(p: &Pkt, key: &NatKey, svc: &Svc4Value, be: &Backend4) -> NatValue {
    let fwd = NatValue {
        saddr: p.saddr,
        daddr: be.addr,
        sport: p.sport,
        dport: be.port,
        flags: 0,
        svc: svc.rev_nat_id,
        seen: now_s(),
    };
    let rkey = NatKey {
        saddr: be.addr,
        daddr: p.saddr,
        sport: be.port,
        dport: p.sport,
        proto: p.proto,
        dir: nat_dir::REPLY,
        _pad: 0,
    };
    let _ = FERRY_NAT4.insert(&rkey, &reply_value(p, svc), 0);
    let _ = FERRY_NAT4.insert(key, &fwd, 0);
    fwd
}

/// Records a new flow to a backend on another node, SNAT-ed to this node so the reply comes
/// back here (the client's port is kept when it is free), and returns the forward translation;
/// `None` when no SNAT port is free.
#[inline(always)]
fn install_remote(
    p: &Pkt,
    key: &NatKey,
    svc: &Svc4Value,
    be: &Backend4,
    cfg: &NodeConfig,
) -> Option<NatValue> {
    let back = reply_value(p, svc);
    install_snat(
        p,
        key,
        be.addr,
        be.port,
        &back,
        nat_flags::REMOTE,
        svc.rev_nat_id,
        cfg,
    )
}

/// SNATs a new flow to this node on its way to `daddr:dport`: claims a node port for the
/// replies from there (`claim_snat_port`, which records them as `back`), records the forward
/// translation with `flags` and `svc`, and returns it; `None` when no port is free.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn install_snat(
    p: &Pkt,
    key: &NatKey,
    daddr: u32,
    dport: u16,
    back: &NatValue,
    flags: u16,
    svc: u16,
    cfg: &NodeConfig,
) -> Option<NatValue> {
    let mut rkey = NatKey {
        saddr: daddr,
        daddr: cfg.node_ip,
        sport: dport,
        dport: p.sport,
        proto: p.proto,
        dir: nat_dir::REPLY,
        _pad: 0,
    };
    if !claim_snat_port(&mut rkey, back, flow_hash(p)) {
        return None;
    }
    let fwd = NatValue {
        saddr: cfg.node_ip,
        daddr,
        sport: rkey.dport,
        dport,
        flags,
        svc,
        seen: now_s(),
    };
    let _ = FERRY_NAT4.insert(key, &fwd, 0);
    Some(fwd)
}

/// Inserts the reply entry `rkey` -> `back` of a SNAT-ed flow, keeping `rkey.dport` (the
/// client's port) when free, else trying ports of 32768-65535 picked from `hash`; whether one
/// was free (`rkey` then holds it).
#[inline(always)]
fn claim_snat_port(rkey: &mut NatKey, back: &NatValue, hash: u32) -> bool {
    let mut i = 0;
    while i < SNAT_TRIES {
        if i > 0 {
            let port = SNAT_PORT_MIN + hash.wrapping_add(i.wrapping_mul(7919)) % SNAT_PORT_SPAN;
            rkey.dport = (port as u16).to_be();
        }
        if FERRY_NAT4
            .insert(&*rkey, back, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn is_local(be: &Backend4, cfg: &NodeConfig) -> bool {
    be.addr & cfg.pod_mask == cfg.pod_net
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Pkt, key: &NatKey, cfg: &NodeConfig) -> i32 {
    if !starts_flow(p) || p.later_fragment {
        return TC_ACT_OK;
    }
    let (svc, be) = match pick_backend(p) {
        Frontend::NotOurs => return TC_ACT_OK,
        Frontend::NoBackend => {
            count_ns(NsStat::NoBackend);
            count_drop(DropReason::NoBackend);
            return TC_ACT_SHOT;
        }
        Frontend::Backend(svc, be) => (svc, be),
    };
    let len = u64::from(ctx.len());
    if is_local(&be, cfg) {
        let fwd = install_local(p, key, &svc, &be);
        if rewrite(ctx, p, &fwd).is_err() {
            count_drop(DropReason::Malformed);
            return TC_ACT_SHOT;
        }
        count_ns(NsStat::NewLocal);
        count_svc(svc.rev_nat_id, 1, 1, len);
        return TC_ACT_OK;
    }
    let Some(fwd) = install_remote(p, key, &svc, &be, cfg) else {
        count_ns(NsStat::NatExhausted);
        count_drop(DropReason::NatExhausted);
        return TC_ACT_SHOT;
    };
    count_ns(NsStat::NewRemote);
    count_svc(svc.rev_nat_id, 1, 1, len);
    translate_out(ctx, p, &fwd)
}

/// The backend of a flow with hash `hash` from the frontend's Maglev table (`master` is the
/// master entry's key, slot 0), if it has one.
#[inline(always)]
fn maglev_pick(master: &Svc4Key, svc: &Svc4Value, hash: u32) -> Option<u32> {
    if svc.flags & svc_flags::MAGLEV == 0 {
        return None;
    }
    let table = FERRY_MAGLEV4.get_ptr(master)?;
    let mut slot = (hash % MAGLEV_TABLE_SIZE as u32) as usize;
    // LLVM turns the modulo into a multiplication and, knowing the result is below the table
    // size, drops every bounds check; the verifier cannot follow that arithmetic and refuses
    // the access. A volatile round trip through the stack hides the range from LLVM, so the
    // explicit check below stays and bounds the index for the verifier.
    // SAFETY: a valid, aligned local.
    let slot = unsafe {
        core::ptr::write_volatile(&mut slot, slot);
        core::ptr::read_volatile(&slot)
    };
    if slot >= MAGLEV_TABLE_SIZE {
        return None;
    }
    // SAFETY: a live map value; the index is in bounds.
    let id = unsafe { (*table).backends.get(slot).copied()? };
    (id != 0).then_some(id)
}

/// TCX egress of the uplink: replies of local backends to outside clients leave with the
/// frontend's address, and so do ICMP errors about their flows (see [`icmp_error`]); this
/// node's pods' own connections to outside the cluster leave with the node's address
/// (masquerade, [`masquerade`]).
#[classifier]
pub fn ferry_to_uplink(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return icmp_error(&ctx, false).unwrap_or(TC_ACT_OK);
    };
    let key = nat_key(&p, nat_dir::REPLY);
    if let Some(v) = nat_lookup(&key, &p) {
        if rewrite(&ctx, &p, &v).is_err() {
            count_drop(DropReason::Malformed);
            return TC_ACT_SHOT;
        }
        count_ns(NsStat::Reply);
        count_svc(v.svc, 0, 1, u64::from(ctx.len()));
        return TC_ACT_OK;
    }
    masquerade(&ctx, &p)
}

/// A packet of one of this node's pods leaving for outside the cluster's pod network and the
/// cluster's nodes (`FERRY_PEER_IPS4`: they route the pod network, and a packet to one may be
/// the reply to a request it SNAT-ed): its
/// source becomes the node's address (the pod's port kept when free), so the reply comes back
/// here, where `ferry_from_uplink` turns it back. Packets of flows without an entry that do not
/// start one (a TCP segment other than a SYN) pass as they are.
#[inline(always)]
fn masquerade(ctx: &TcContext, p: &Pkt) -> i32 {
    let Some(cfg) = FERRY_NODE_CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    if cfg.ready == 0
        || cfg.masquerade == 0
        || p.saddr & cfg.pod_mask != cfg.pod_net
        || p.daddr & cfg.cluster_mask == cfg.cluster_net
        || FERRY_PEER_IPS4.get_ptr(&p.daddr).is_some()
    {
        return TC_ACT_OK;
    }
    let cfg = *cfg;
    let key = nat_key(p, nat_dir::FORWARD);
    let fwd = match nat_lookup(&key, p) {
        Some(v) => v,
        None => {
            if !starts_flow(p) || p.later_fragment {
                return TC_ACT_OK;
            }
            match install_masquerade(p, &key, &cfg) {
                Some(v) => v,
                None => {
                    count_ns(NsStat::NatExhausted);
                    count_drop(DropReason::NatExhausted);
                    return TC_ACT_SHOT;
                }
            }
        }
    };
    if rewrite(ctx, p, &fwd).is_err() {
        count_drop(DropReason::Malformed);
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// Records a pod's new connection to outside: the node's address and a free source port
/// (the pod's own when free), both directions; the forward translation, or `None` when no
/// port is free.
#[inline(always)]
fn install_masquerade(p: &Pkt, key: &NatKey, cfg: &NodeConfig) -> Option<NatValue> {
    // Replies (from the destination to the node's port) go back to the pod.
    let back = NatValue {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        flags: nat_flags::MASQ,
        svc: 0,
        seen: now_s(),
    };
    let fwd = install_snat(p, key, p.daddr, p.dport, &back, nat_flags::MASQ, 0, cfg)?;
    count_ns(NsStat::Masquerade);
    Some(fwd)
}

// ---------------------------------------------------------------------------------------------
// The XDP fast path on the uplink (`--lb-acceleration`): before any socket buffer exists, it
// handles the north-south packets that leave through the interface they came in on (flows to
// and from backends on other nodes over direct routes) and drops new flows to frontends
// without backends. Everything else passes untouched to `ferry_from_uplink`, which does the
// same translations at TC: local backends, other egress devices (VXLAN), neighbours not yet
// resolved, ARP, fragments, IP options.

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const IPV4_HLEN: usize = 20;

/// A pointer to a `T` at `off` in the packet, if the packet holds it.
#[inline(always)]
fn xdp_ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn xdp_load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: in bounds (checked); packet memory may be unaligned.
    xdp_ptr::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Like [`parse`], for an IPv4 header without options (others pass to TC).
#[inline(always)]
fn xdp_parse(ctx: &XdpContext) -> Option<Pkt> {
    let eth_type: u16 = xdp_load(ctx, ETH_TYPE_OFFSET)?;
    if u16::from_be(eth_type) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = xdp_load(ctx, ETH_HLEN)?;
    if version_ihl != 0x45 {
        return None;
    }
    let proto: u8 = xdp_load(ctx, ETH_HLEN + IPV4_PROTO_OFFSET)?;
    if proto != ipproto::TCP && proto != ipproto::UDP {
        return None;
    }
    let frag: u16 = xdp_load(ctx, ETH_HLEN + IPV4_FRAG_OFF_OFFSET)?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let l4 = ETH_HLEN + IPV4_HLEN;
    let tcp_flags = if proto == ipproto::TCP {
        // The whole TCP header must be there (its checksum is rewritten).
        xdp_load::<[u8; 20]>(ctx, l4)?[13]
    } else {
        xdp_load::<[u8; 8]>(ctx, l4)?;
        0
    };
    Some(Pkt {
        saddr: xdp_load(ctx, IP_SRC_OFF)?,
        daddr: xdp_load(ctx, IP_DST_OFF)?,
        sport: xdp_load(ctx, l4)?,
        dport: xdp_load(ctx, l4 + L4_DST_PORT_OFFSET)?,
        proto,
        l4,
        tcp_flags,
        later_fragment: false,
    })
}

/// One's complement sum folded to 16 bits.
#[inline(always)]
fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` after a 32-bit word of what it covers changed from `from` to `to`
/// (RFC 1624, eqn. 3). Words are in packet byte order; the sum does not depend on it.
#[inline(always)]
fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
    let nfrom = !from;
    let sum = u32::from(!check) + (nfrom & 0xffff) + (nfrom >> 16) + (to & 0xffff) + (to >> 16);
    !csum_fold(sum)
}

/// [`csum_replace4`] for a 16-bit word.
#[inline(always)]
fn csum_replace2(check: u16, from: u16, to: u16) -> u16 {
    !csum_fold(u32::from(!check) + u32::from(!from) + u32::from(to))
}

/// [`rewrite`] by direct packet access, checksums fixed by hand (XDP has no checksum helpers).
/// A frame from the wire carries complete checksums, which incremental updates keep right.
#[inline(always)]
fn xdp_rewrite(ctx: &XdpContext, p: &Pkt, v: &NatValue) -> Option<()> {
    let ip_csum = xdp_ptr::<u16>(ctx, IP_CSUM_OFF)?;
    let l4_csum = if p.proto == ipproto::TCP {
        xdp_ptr::<u16>(ctx, ETH_HLEN + IPV4_HLEN + 16)?
    } else {
        xdp_ptr::<u16>(ctx, ETH_HLEN + IPV4_HLEN + 6)?
    };
    let saddr = xdp_ptr::<u32>(ctx, IP_SRC_OFF)?;
    let daddr = xdp_ptr::<u32>(ctx, IP_DST_OFF)?;
    let sport = xdp_ptr::<u16>(ctx, ETH_HLEN + IPV4_HLEN)?;
    let dport = xdp_ptr::<u16>(ctx, ETH_HLEN + IPV4_HLEN + L4_DST_PORT_OFFSET)?;
    // SAFETY: every pointer was bounds-checked above; unaligned accesses throughout.
    unsafe {
        let mut ip = core::ptr::read_unaligned(ip_csum);
        ip = csum_replace4(ip, p.saddr, v.saddr);
        ip = csum_replace4(ip, p.daddr, v.daddr);
        core::ptr::write_unaligned(ip_csum, ip);
        let l4 = core::ptr::read_unaligned(l4_csum);
        // A UDP datagram without a checksum keeps none.
        if p.proto == ipproto::TCP || l4 != 0 {
            let mut c = csum_replace4(l4, p.saddr, v.saddr);
            c = csum_replace4(c, p.daddr, v.daddr);
            c = csum_replace2(c, p.sport, v.sport);
            c = csum_replace2(c, p.dport, v.dport);
            if p.proto == ipproto::UDP && c == 0 {
                c = 0xffff;
            }
            core::ptr::write_unaligned(l4_csum, c);
        }
        core::ptr::write_unaligned(saddr, v.saddr);
        core::ptr::write_unaligned(daddr, v.daddr);
        core::ptr::write_unaligned(sport, v.sport);
        core::ptr::write_unaligned(dport, v.dport);
    }
    Some(())
}

/// The Ethernet addresses for sending a packet translated to `v` back out of the interface it
/// came in on: `None` when the route leaves through another device, the neighbour is not
/// resolved yet, or the packet is too big for the route; TC deals with those.
#[inline(always)]
fn xdp_next_hop(ctx: &XdpContext, v: &NatValue, proto: u8) -> Option<([u8; 6], [u8; 6])> {
    // SAFETY: an all-zero bpf_fib_lookup is valid; the union fields set are the IPv4 ones.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.sport = v.sport;
    params.dport = v.dport;
    let ifindex = ctx.ingress_ifindex() as u32;
    params.ifindex = ifindex;
    params.__bindgen_anon_1.tot_len = (ctx.data_end() - ctx.data()).saturating_sub(ETH_HLEN) as u16;
    params.__bindgen_anon_3.ipv4_src = v.saddr;
    params.__bindgen_anon_4.ipv4_dst = v.daddr;
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    (r == BPF_FIB_LKUP_RET_SUCCESS && params.ifindex == ifindex)
        .then_some((params.dmac, params.smac))
}

/// Translates the packet to `v` and sends it back out of the uplink, or `None` (the packet is
/// untouched) when it must take the TC path.
#[inline(always)]
fn xdp_transmit(ctx: &XdpContext, p: &Pkt, v: &NatValue) -> Option<u32> {
    let macs = xdp_next_hop(ctx, v, p.proto)?;
    xdp_emit(ctx, p, v, macs)
}

/// [`xdp_transmit`] with the next hop's Ethernet addresses already looked up.
#[inline(always)]
fn xdp_emit(
    ctx: &XdpContext,
    p: &Pkt,
    v: &NatValue,
    (dmac, smac): ([u8; 6], [u8; 6]),
) -> Option<u32> {
    xdp_rewrite(ctx, p, v)?;
    let eth = xdp_ptr::<[u8; 12]>(ctx, 0)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dmac);
    macs[6..].copy_from_slice(&smac);
    // SAFETY: bounds-checked.
    unsafe { core::ptr::write_unaligned(eth, macs) };
    count_ns(NsStat::XdpTx);
    count_svc(v.svc, 0, 1, (ctx.data_end() - ctx.data()) as u64);
    Some(XDP_TX)
}

/// XDP on the uplink: the fast path in front of `ferry_from_uplink` (see above).
#[xdp]
pub fn ferry_xdp_uplink(ctx: XdpContext) -> u32 {
    let Some(cfg) = FERRY_NODE_CONFIG.get(0) else {
        return XDP_PASS;
    };
    if cfg.ready == 0 {
        return XDP_PASS;
    }
    let cfg = *cfg;
    let Some(p) = xdp_parse(&ctx) else {
        return XDP_PASS;
    };
    // A reply at the uplink is always one from a remote backend (local backends' replies
    // leave through `ferry_to_uplink`).
    // Sent (counted under `stat` too), or passed to TC.
    let send = |v: &NatValue, stat: NsStat| match xdp_transmit(&ctx, &p, v) {
        Some(verdict) => {
            count_ns(stat);
            verdict
        }
        None => XDP_PASS,
    };
    let key = nat_key(&p, nat_dir::REPLY);
    if let Some(v) = nat_lookup(&key, &p) {
        return send(&v, NsStat::Reply);
    }
    let key = nat_key(&p, nat_dir::FORWARD);
    if let Some(v) = nat_lookup(&key, &p) {
        if v.flags & nat_flags::REMOTE == 0 {
            return XDP_PASS;
        }
        return send(&v, NsStat::Forward);
    }
    if !starts_flow(&p) {
        return XDP_PASS;
    }
    let (svc, be) = match pick_backend(&p) {
        Frontend::NotOurs => return XDP_PASS,
        Frontend::NoBackend => {
            count_ns(NsStat::NoBackend);
            count_ns(NsStat::XdpDrop);
            count_drop(DropReason::NoBackend);
            return XDP_DROP;
        }
        Frontend::Backend(svc, be) => (svc, be),
    };
    if is_local(&be, &cfg) {
        return XDP_PASS;
    }
    // Only when the backend is reachable out of this interface, before any state is written:
    // otherwise TC makes the same choice and does the rest.
    let probe = NatValue {
        saddr: cfg.node_ip,
        daddr: be.addr,
        sport: p.sport,
        dport: be.port,
        flags: 0,
        svc: 0,
        seen: 0,
    };
    // The route does not depend on the SNAT port picked below: this lookup serves the send.
    let Some(macs) = xdp_next_hop(&ctx, &probe, p.proto) else {
        return XDP_PASS;
    };
    let Some(fwd) = install_remote(&p, &key, &svc, &be, &cfg) else {
        count_ns(NsStat::NatExhausted);
        count_drop(DropReason::NatExhausted);
        return XDP_DROP;
    };
    count_svc(svc.rev_nat_id, 1, 0, 0);
    match xdp_emit(&ctx, &p, &fwd, macs) {
        Some(verdict) => {
            count_ns(NsStat::NewRemote);
            verdict
        }
        // Passed: the entries are in place, TC translates the packet as a known flow.
        None => XDP_PASS,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// The kernel decides GPL-compatibility per program: GPL-only helpers and kfuncs that the
/// service datapath will need (bpf_fib_lookup, conntrack kfuncs) refuse non-GPL programs.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!(
        "ferry-ebpf is a BPF object, not a host program: it is built for bpfel-unknown-none by \
         ferry-agent's build.rs (aya-build) and loaded by the agent"
    );
}
