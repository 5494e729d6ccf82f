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
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, classifier, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext},
};
use ferry_ebpf_common::{
    AFFINITY4_MAX_ENTRIES, Affinity4Key, Affinity4Value, BACKENDS4_MAX_ENTRIES, Backend4,
    DENY_PORTS_MAX_ENTRIES, DenyKey, DenyValue, DropReason, NODE_IPS4_MAX_ENTRIES, PacketCounter,
    SOCK_REVNAT4_MAX_ENTRIES, SVC4_MAX_ENTRIES, SockRevKey, SockRevValue, SockStat, Svc4Key,
    Svc4Value, Verdict, ipproto, svc_flags,
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
        scope: 0,
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
