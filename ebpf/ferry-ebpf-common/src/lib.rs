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
}

impl DropReason {
    /// Number of entries in [`DROP_REASONS_MAP`].
    pub const COUNT: u32 = 2;
    pub const ALL: [DropReason; Self::COUNT as usize] =
        [DropReason::DeniedPort, DropReason::Malformed];
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are #[repr(C)], contain only integers, have no implicit padding (checked
    // by the size asserts above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::DenyKey {}
    unsafe impl aya::Pod for super::DenyValue {}
    unsafe impl aya::Pod for super::PacketCounter {}
}
