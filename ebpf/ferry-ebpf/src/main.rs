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
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use ferry_ebpf_common::{
    DENY_PORTS_MAX_ENTRIES, DenyKey, DenyValue, DropReason, PacketCounter, Verdict, ipproto,
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
