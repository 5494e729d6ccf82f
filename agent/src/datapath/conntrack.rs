//! The connection-tracking sweep: north-south flows' translations (`FERRY_NAT4`, an LRU map the
//! TC programs fill) are removed once idle, or once their backend is gone, instead of waiting
//! for the LRU to evict them.
//!
//! Every entry records when a packet last used it (`NatValue::seen`, seconds of
//! CLOCK_MONOTONIC) and whether a TCP FIN or RST passed (`nat_flags::CLOSING`). The agent's
//! sync loop calls [`sweep`] every [`SWEEP_EVERY`]: an entry idle longer than its timeout
//! ([`Timeouts`], Cilium's defaults) goes, and so does every entry whose backend is no longer
//! an endpoint of any Service (ready or terminating), so a client that reuses its port never
//! lands on a pod that is gone. Terminating endpoints keep their flows until they leave the
//! EndpointSlice.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use ferry_ebpf_common::{NatKey, NatValue, ipproto, nat_dir, nat_flags};

use super::DatapathError;

/// How often the sync loop sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How long an idle entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, not closing.
    pub tcp: Duration,
    /// TCP after a FIN or RST.
    pub tcp_closing: Duration,
    /// UDP and everything else.
    pub other: Duration,
}

impl Default for Timeouts {
    /// Cilium's: 6 h established TCP, 10 s closing, 60 s UDP.
    fn default() -> Self {
        Timeouts {
            tcp: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    /// Entries whose backend is no longer an endpoint.
    pub orphaned: usize,
}

/// The backend an entry's flow goes to: (address, port) in host order.
fn backend_of(key: &NatKey, value: &NatValue) -> (Ipv4Addr, u16) {
    if key.dir == nat_dir::REPLY {
        (
            Ipv4Addr::from(u32::from_be(key.saddr)),
            u16::from_be(key.sport),
        )
    } else {
        (
            Ipv4Addr::from(u32::from_be(value.daddr)),
            u16::from_be(value.dport),
        )
    }
}

/// Whether an entry last used at `seen` (seconds) has expired at `now` (seconds).
pub fn expired(key: &NatKey, value: &NatValue, now: u32, t: &Timeouts) -> bool {
    let timeout = if key.proto == ipproto::TCP {
        if value.flags & nat_flags::CLOSING != 0 {
            t.tcp_closing
        } else {
            t.tcp
        }
    } else {
        t.other
    };
    u64::from(now.saturating_sub(value.seen)) > timeout.as_secs()
}

/// Seconds of CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        ts.tv_sec as u32
    } else {
        0
    }
}

/// One entry of the translation map, as `ferry datapath conntrack` shows it (host order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// A packet from outside (`forward`) or a reply (`reply`).
    pub reply: bool,
    pub proto: u8,
    /// The packet's tuple as it arrives: (source, destination).
    pub from: ((Ipv4Addr, u16), (Ipv4Addr, u16)),
    /// What it is rewritten to.
    pub to: ((Ipv4Addr, u16), (Ipv4Addr, u16)),
    /// The backend is on another node.
    pub remote: bool,
    pub closing: bool,
    /// A pod's own connection to outside, masqueraded.
    pub masquerade: bool,
    /// Seconds since a packet last used the entry.
    pub idle_s: u32,
}

/// Every entry of the translation map pinned under `pin_dir` (any process, as root).
pub fn dump_pinned(pin_dir: &std::path::Path) -> Result<Vec<Flow>, DatapathError> {
    let name = ferry_ebpf_common::NAT4_MAP;
    let data = MapData::from_pin(pin_dir.join(name))
        .map_err(|e| DatapathError::map(name, "open pinned", e))?;
    let map: BpfHashMap<MapData, NatKey, NatValue> =
        BpfHashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(|e| DatapathError::map(name, "open", e))?;
    let now = monotonic_now();
    let ep = |a: u32, p: u16| (Ipv4Addr::from(u32::from_be(a)), u16::from_be(p));
    let mut flows: Vec<Flow> = map
        .iter()
        .flatten()
        .map(|(k, v)| Flow {
            reply: k.dir == nat_dir::REPLY,
            proto: k.proto,
            from: (ep(k.saddr, k.sport), ep(k.daddr, k.dport)),
            to: (ep(v.saddr, v.sport), ep(v.daddr, v.dport)),
            remote: v.flags & nat_flags::REMOTE != 0,
            closing: v.flags & nat_flags::CLOSING != 0,
            masquerade: v.flags & nat_flags::MASQ != 0,
            idle_s: now.saturating_sub(v.seen),
        })
        .collect();
    flows.sort_by_key(|f| (f.reply, f.from));
    Ok(flows)
}

/// Removes the expired entries of the translation map and those whose backend is not in
/// `backends` (address, port, host order).
pub fn sweep(
    map: &mut BpfHashMap<MapData, NatKey, NatValue>,
    backends: &HashSet<(Ipv4Addr, u16)>,
    now: u32,
    t: &Timeouts,
) -> SweepReport {
    let mut report = SweepReport::default();
    let mut gone: Vec<NatKey> = Vec::new();
    for item in map.iter() {
        let Ok((key, value)) = item else {
            // An entry evicted while we iterate: nothing to do for it.
            continue;
        };
        report.scanned += 1;
        if expired(&key, &value, now, t) {
            report.expired += 1;
            gone.push(key);
        } else if value.flags & nat_flags::MASQ == 0
            && !backends.contains(&backend_of(&key, &value))
        {
            report.orphaned += 1;
            gone.push(key);
        }
    }
    for key in &gone {
        // Already evicted by the LRU, or removed by a concurrent sweep: fine.
        let _ = map.remove(key);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: u8, dir: u8, flags: u16, seen: u32) -> (NatKey, NatValue) {
        let key = NatKey {
            saddr: u32::from(Ipv4Addr::new(10, 244, 1, 5)).to_be(),
            daddr: u32::from(Ipv4Addr::new(192, 168, 1, 2)).to_be(),
            sport: 8080u16.to_be(),
            dport: 40000u16.to_be(),
            proto,
            dir,
            _pad: 0,
        };
        let value = NatValue {
            saddr: 0,
            daddr: u32::from(Ipv4Addr::new(10, 244, 2, 7)).to_be(),
            sport: 0,
            dport: 9090u16.to_be(),
            flags,
            svc: 1,
            seen,
        };
        (key, value)
    }

    #[test]
    fn timeouts_follow_protocol_and_closing() {
        let t = Timeouts::default();
        let (k, v) = entry(ipproto::TCP, nat_dir::FORWARD, 0, 1000);
        assert!(!expired(&k, &v, 1000 + 3600, &t));
        assert!(expired(&k, &v, 1000 + 6 * 3600 + 1, &t));
        let (k, v) = entry(ipproto::TCP, nat_dir::FORWARD, nat_flags::CLOSING, 1000);
        assert!(!expired(&k, &v, 1010, &t));
        assert!(expired(&k, &v, 1011, &t));
        let (k, v) = entry(ipproto::UDP, nat_dir::FORWARD, 0, 1000);
        assert!(!expired(&k, &v, 1060, &t));
        assert!(expired(&k, &v, 1061, &t));
        // A clock that went backwards (a restart reusing old entries) never expires early.
        assert!(!expired(&k, &v, 10, &t));
    }

    /// The sweep on the real maps: the BPF object loaded into a scratch pin directory and
    /// cgroup (root only), entries written as the TC programs write them.
    #[test]
    fn the_sweep_removes_idle_and_orphaned_flows_from_the_real_map() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP conntrack sweep on real maps: needs root (BPF)");
            return;
        }
        use crate::datapath::services::{BackendAddr, Entry, Frontend};
        use crate::datapath::socklb::{self, SockLb};
        let id = std::process::id();
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/ferry/test-ct-{id}"));
        let cgroup = socklb::cgroup2_root()
            .expect("cgroup2")
            .join(format!("ferry-test-ct-{id}"));
        std::fs::create_dir_all(&cgroup).expect("cgroup");
        struct Cleanup(std::path::PathBuf, std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = socklb::remove(&self.0);
                let _ = std::fs::remove_dir(&self.1);
            }
        }
        let _cleanup = Cleanup(pin_dir.clone(), cgroup.clone());
        let mut lb = SockLb::load(&pin_dir, &cgroup, None).expect("load");
        let live = BackendAddr {
            addr: Ipv4Addr::new(10, 244, 1, 5),
            port: 8080,
            proto: ipproto::TCP,
        };
        let mut want = std::collections::BTreeMap::new();
        want.insert(
            Frontend::internal(Ipv4Addr::new(10, 96, 0, 10), 80, ipproto::TCP),
            Entry {
                service: "default/web:http".into(),
                ready: vec![live],
                ..Default::default()
            },
        );
        lb.sync(&want).expect("sync");
        let data = MapData::from_pin(pin_dir.join(ferry_ebpf_common::NAT4_MAP)).expect("pin");
        let mut nat: BpfHashMap<MapData, NatKey, NatValue> =
            BpfHashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("map");
        let now = monotonic_now();
        // A live flow to the live backend (both directions), an idle one, one to a gone pod.
        let (fresh_reply, mut fresh_value) = entry(ipproto::TCP, nat_dir::REPLY, 0, now);
        let (mut fresh_fwd, _) = entry(ipproto::TCP, nat_dir::FORWARD, 0, now);
        fresh_value.daddr = u32::from(live.addr).to_be();
        fresh_value.dport = live.port.to_be();
        fresh_fwd.sport = 1111u16.to_be();
        let (mut idle, idle_value) =
            entry(ipproto::UDP, nat_dir::REPLY, 0, now.saturating_sub(120));
        idle.sport = 8080u16.to_be();
        let (mut orphan, mut orphan_value) = entry(ipproto::TCP, nat_dir::FORWARD, 0, now);
        orphan.sport = 2222u16.to_be();
        orphan_value.daddr = u32::from(Ipv4Addr::new(10, 244, 9, 9)).to_be();
        // A pod's masqueraded connection to outside: no backend, yet not orphaned.
        let (mut masq, mut masq_value) = entry(ipproto::TCP, nat_dir::FORWARD, 0, now);
        masq.sport = 3333u16.to_be();
        masq_value.daddr = u32::from(Ipv4Addr::new(192, 0, 2, 1)).to_be();
        masq_value.flags = nat_flags::MASQ;
        for (k, v) in [
            (fresh_reply, fresh_value),
            (fresh_fwd, fresh_value),
            (idle, idle_value),
            (orphan, orphan_value),
            (masq, masq_value),
        ] {
            nat.insert(k, v, 0).expect("insert");
        }
        let report = lb.sweep_conntrack(&Timeouts::default());
        assert_eq!(
            report,
            SweepReport {
                scanned: 5,
                expired: 1,
                orphaned: 1
            }
        );
        assert!(nat.get(&masq, 0).is_ok());
        assert!(nat.get(&fresh_reply, 0).is_ok());
        assert!(nat.get(&fresh_fwd, 0).is_ok());
        assert!(nat.get(&idle, 0).is_err());
        assert!(nat.get(&orphan, 0).is_err());
    }

    #[test]
    fn the_backend_is_the_reply_source_or_the_forward_destination() {
        let (k, v) = entry(ipproto::TCP, nat_dir::REPLY, 0, 0);
        assert_eq!(backend_of(&k, &v), (Ipv4Addr::new(10, 244, 1, 5), 8080));
        let (k, v) = entry(ipproto::TCP, nat_dir::FORWARD, 0, 0);
        assert_eq!(backend_of(&k, &v), (Ipv4Addr::new(10, 244, 2, 7), 9090));
    }
}
