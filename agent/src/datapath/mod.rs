//! eBPF datapath loader: owns loading Ferry's BPF object (built from `ebpf/ferry-ebpf` by
//! `build.rs` and embedded in this crate), attaching its programs to interfaces, and reading
//! and writing their maps through the shared types of `ferry-ebpf-common`.
//!
//! It decides nothing about policy: callers say which ports to deny; this module only turns
//! that into map entries and reports what the programs counted. It must never leave a program
//! attached that nobody owns: every attachment belongs to a value whose `Drop` detaches it.
//!
//! TC programs are attached through TCX links (kernel >= 6.6). A TCX link goes away with its
//! file descriptor, so a crashed agent leaves no filter behind, and detaching works from any
//! thread, whichever network namespace that thread is in.

pub mod conntrack;
mod error;
pub mod health;
pub mod l2;
pub mod maglev;
pub mod services;
pub mod socklb;
pub mod sync;

use std::fmt;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttachOptions},
    },
};
pub use error::DatapathError;
use ferry_ebpf_common::{
    DENY_PORTS_MAP, DROP_REASONS_MAP, DenyKey, DenyValue, PacketCounter, TC_DENY_PROGRAM,
    VERDICT_STATS_MAP, ipproto,
};
pub use ferry_ebpf_common::{DropReason, SvcStats, Verdict};

/// The BPF object built by `build.rs`; 8-byte aligned as the ELF parser requires.
static FERRY_EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf"));

/// The embedded BPF object, or an error when the build skipped it.
pub(crate) fn object() -> Result<&'static [u8], DatapathError> {
    if FERRY_EBPF_OBJECT.is_empty() {
        Err(DatapathError::ObjectNotBuilt)
    } else {
        Ok(FERRY_EBPF_OBJECT)
    }
}

/// L4 protocol of a deny rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => ipproto::TCP,
            Protocol::Udp => ipproto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Which way through the interface the filter sees packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl From<Direction> for TcAttachType {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// Totals of the filter's counters, summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed: PacketCounter,
    pub dropped: PacketCounter,
    drops_by_reason: [u64; DropReason::COUNT as usize],
}

impl Counters {
    pub fn verdict(&self, verdict: Verdict) -> PacketCounter {
        match verdict {
            Verdict::Pass => self.passed,
            Verdict::Drop => self.dropped,
        }
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops_by_reason[reason as usize]
    }
}

/// The `ferry_tc_deny` TC classifier attached to one interface: drops IPv4 TCP/UDP packets to
/// denied destination ports. Detaches (and unloads) on drop.
pub struct DenyFilter {
    // Field order matters for drop: the link is detached explicitly in `Drop`, then the maps
    // and the object (program fd) are released.
    link: Option<SchedClassifierLinkId>,
    ifname: String,
    direction: Direction,
    deny_ports: HashMap<MapData, DenyKey, DenyValue>,
    verdict_stats: PerCpuArray<MapData, PacketCounter>,
    drop_reasons: PerCpuArray<MapData, u64>,
    ebpf: Ebpf,
}

impl fmt::Debug for DenyFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenyFilter")
            .field("ifname", &self.ifname)
            .field("direction", &self.direction)
            .field("attached", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

impl DenyFilter {
    /// Loads the program and attaches it to `ifname`'s ingress.
    ///
    /// The interface is looked up in the calling thread's network namespace.
    pub fn attach(ifname: &str) -> Result<Self, DatapathError> {
        Self::attach_with(ifname, Direction::Ingress)
    }

    /// Loads the program and attaches it to `ifname` in the given direction.
    pub fn attach_with(ifname: &str, direction: Direction) -> Result<Self, DatapathError> {
        if FERRY_EBPF_OBJECT.is_empty() {
            return Err(DatapathError::ObjectNotBuilt);
        }
        let mut ebpf =
            Ebpf::load(FERRY_EBPF_OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;

        let deny_ports = take_map(&mut ebpf, DENY_PORTS_MAP)?;
        let verdict_stats = take_map(&mut ebpf, VERDICT_STATS_MAP)?;
        let drop_reasons = take_map(&mut ebpf, DROP_REASONS_MAP)?;

        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_DENY_PROGRAM)
            .ok_or(DatapathError::MissingProgram {
                program: TC_DENY_PROGRAM,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                program: TC_DENY_PROGRAM,
                op: "type check",
                source: Box::new(source),
            })?;
        program.load().map_err(|source| DatapathError::Program {
            program: TC_DENY_PROGRAM,
            op: "load (verifier)",
            source: Box::new(source),
        })?;
        let link = program
            .attach_with_options(
                ifname,
                direction.into(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| DatapathError::Attach {
                program: TC_DENY_PROGRAM,
                ifname: ifname.to_owned(),
                direction,
                source: Box::new(source),
            })?;

        Ok(Self {
            link: Some(link),
            ifname: ifname.to_owned(),
            direction,
            deny_ports,
            verdict_stats,
            drop_reasons,
            ebpf,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Drops packets to `port`/`proto` from now on. Idempotent.
    pub fn deny_port(&mut self, port: u16, proto: Protocol) -> Result<(), DatapathError> {
        self.deny_ports
            .insert(DenyKey::new(port, proto.number()), DenyValue::default(), 0)
            .map_err(|source| DatapathError::Map {
                map: DENY_PORTS_MAP,
                op: format!("deny {proto}/{port}"),
                source: Box::new(source),
            })
    }

    /// Stops dropping packets to `port`/`proto`. Idempotent.
    pub fn allow_port(&mut self, port: u16, proto: Protocol) -> Result<(), DatapathError> {
        match self.deny_ports.remove(&DenyKey::new(port, proto.number())) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map {
                map: DENY_PORTS_MAP,
                op: format!("allow {proto}/{port}"),
                source: Box::new(source),
            }),
        }
    }

    /// Reads the per-CPU counters and sums them.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let mut counters = Counters::default();
        for verdict in Verdict::ALL {
            let per_cpu = self
                .verdict_stats
                .get(&(verdict as u32), 0)
                .map_err(|source| DatapathError::Map {
                    map: VERDICT_STATS_MAP,
                    op: format!("read {verdict:?}"),
                    source: Box::new(source),
                })?;
            let total = per_cpu
                .iter()
                .fold(PacketCounter::default(), |acc, c| PacketCounter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
            match verdict {
                Verdict::Pass => counters.passed = total,
                Verdict::Drop => counters.dropped = total,
            }
        }
        for reason in DropReason::ALL {
            let per_cpu = self
                .drop_reasons
                .get(&(reason as u32), 0)
                .map_err(|source| DatapathError::Map {
                    map: DROP_REASONS_MAP,
                    op: format!("read {reason:?}"),
                    source: Box::new(source),
                })?;
            counters.drops_by_reason[reason as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }

    /// Detaches the program now, reporting failure (dropping the filter does the same but
    /// can only ignore errors).
    pub fn detach(mut self) -> Result<(), DatapathError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), DatapathError> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(TC_DENY_PROGRAM)
            .ok_or(DatapathError::MissingProgram {
                program: TC_DENY_PROGRAM,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                program: TC_DENY_PROGRAM,
                op: "type check",
                source: Box::new(source),
            })?;
        program
            .detach(link)
            .map_err(|source| DatapathError::Detach {
                program: TC_DENY_PROGRAM,
                ifname: self.ifname.clone(),
                source: Box::new(source),
            })
    }
}

impl Drop for DenyFilter {
    fn drop(&mut self) {
        // Nothing to report to here. If this fails the link still goes away when `ebpf` closes
        // the link fd right after (TCX semantics).
        let _ = self.detach_inner();
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap { map: name })?;
    T::try_from(map).map_err(|source| DatapathError::Map {
        map: name,
        op: "type check".to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// Without root: the embedded object is a BPF ELF carrying the symbols the loader looks up
    /// by name, so a rename on one side fails here rather than at attach time.
    #[test]
    fn embedded_object_names_match_the_loader() {
        if FERRY_EBPF_OBJECT.is_empty() {
            eprintln!("skipping: BPF object not built (AYA_BUILD_SKIP)");
            return;
        }
        assert_eq!(&FERRY_EBPF_OBJECT[..4], b"\x7fELF");
        const EM_BPF: u16 = 247;
        let machine = u16::from_le_bytes([FERRY_EBPF_OBJECT[18], FERRY_EBPF_OBJECT[19]]);
        assert_eq!(machine, EM_BPF);
        for name in [
            TC_DENY_PROGRAM,
            DENY_PORTS_MAP,
            VERDICT_STATS_MAP,
            DROP_REASONS_MAP,
        ] {
            assert!(
                contains(FERRY_EBPF_OBJECT, name),
                "{name} missing from the BPF object"
            );
        }
    }

    #[test]
    fn counters_index_by_reason() {
        let mut c = Counters::default();
        c.drops_by_reason[DropReason::Malformed as usize] = 3;
        assert_eq!(c.drops(DropReason::Malformed), 3);
        assert_eq!(c.drops(DropReason::DeniedPort), 0);
    }
}
