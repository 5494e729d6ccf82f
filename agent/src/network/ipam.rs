//! Pod IP address management for one node: hands out IPv4 addresses from the node's pod CIDR,
//! one per pod, and persists every change before returning it.
//!
//! Invariants this module keeps (and its tests check):
//! - the network address, the gateway (first usable address, owned by the node's bridge) and
//!   the broadcast address are never handed out;
//! - no address is held by two pods, and a pod holds at most one address; allocating again for
//!   a pod that has one returns the same address;
//! - an allocation is on disk (temp file, fsync, rename, fsync of the directory) before
//!   [`Ipam::allocate`] returns it, so an agent restarted at any point never hands out a live
//!   address twice. A failed write leaves the in-memory state as it was.
//! - A state file that cannot be read, does not parse or belongs to another pod CIDR is an
//!   error, never a reason to start empty: starting empty is exactly how a live address would be
//!   handed out twice.
//!
//! Addresses are handed out round-robin (the search starts after the last one handed out), so a
//! just-released address is not reused at once and stale peers of a deleted pod do not reach
//! its successor.
//!
//! One agent owns a state file; nothing here locks it against a second process.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File},
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use super::error::{NetworkError, Result};

/// Smallest and largest accepted prefix lengths. /30 is the smallest block that still has one
/// address for a pod besides network, gateway and broadcast; below /8 a node CIDR is surely a
/// mistake.
const MIN_PREFIX: u8 = 8;
const MAX_PREFIX: u8 = 30;

/// The identity of a pod. Two pods with the same namespace and name but different uids are
/// different pods (a re-created pod gets its own address).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodKey {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// Checks that each part is usable as a path component and in files: the pod network
    /// names a directory after the key.
    pub fn validate(&self) -> Result<()> {
        for (what, value) in [
            ("pod namespace", &self.namespace),
            ("pod name", &self.name),
            ("pod uid", &self.uid),
        ] {
            let reason = if value.is_empty() {
                Some("must not be empty")
            } else if value.len() > 253 {
                Some("longer than 253 bytes")
            } else if value == "." || value == ".." {
                Some("must not be `.` or `..`")
            } else if value
                .chars()
                .any(|c| c == '/' || c == '_' || c.is_control() || c.is_whitespace())
            {
                Some("must not contain `/`, `_`, whitespace or control characters")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(NetworkError::InvalidInput {
                    what,
                    value: value.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// A stable 32-bit hash (FNV-1a), the same in every build and on every machine: link names
    /// derived from it must be found again by a restarted agent.
    pub fn stable_hash(&self) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [&self.namespace, &self.name, &self.uid] {
            for b in part.bytes().chain(std::iter::once(0)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        // Fold so every input bit influences the 32 bits that are used.
        ((h >> 32) ^ h) as u32
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// An IPv4 network in CIDR notation whose host bits are zero, with a prefix of /8 to /30.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self> {
        let input = format!("{network}/{prefix}");
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(NetworkError::InvalidCidr {
                input,
                reason: "prefix length must be between /8 and /30",
            });
        }
        let cidr = Ipv4Cidr { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(NetworkError::InvalidCidr {
                input,
                reason: "host bits are set (expected the network address)",
            });
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The first usable address: the node side (bridge) of the pod network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// First and last address a pod may get (gateway + 1 ..= broadcast - 1).
    fn pod_range(&self) -> (u32, u32) {
        (u32::from(self.network) + 2, u32::from(self.broadcast()) - 1)
    }

    /// How many addresses pods can get.
    pub fn pod_capacity(&self) -> usize {
        let (first, last) = self.pod_range();
        (last - first + 1) as usize
    }

    /// Whether a pod may hold `ip`.
    pub fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.pod_range();
        (first..=last).contains(&u32::from(ip))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| NetworkError::InvalidCidr {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| invalid("not an IPv4 address (only IPv4 pod CIDRs are supported)"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("prefix length is not a number"))?;
        Ipv4Cidr::new(addr, prefix).map_err(|e| match e {
            NetworkError::InvalidCidr { reason, .. } => invalid(reason),
            other => other,
        })
    }
}

/// The allocation table without any IO: what [`Ipam`] persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamState {
    cidr: Ipv4Cidr,
    /// Last address handed out: the next search starts after it.
    last: Option<Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, PodKey>,
    by_pod: BTreeMap<PodKey, Ipv4Addr>,
}

impl IpamState {
    pub fn new(cidr: Ipv4Cidr) -> Self {
        IpamState {
            cidr,
            last: None,
            by_ip: BTreeMap::new(),
            by_pod: BTreeMap::new(),
        }
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    pub fn get(&self, pod: &PodKey) -> Option<Ipv4Addr> {
        self.by_pod.get(pod).copied()
    }

    pub fn owner(&self, ip: Ipv4Addr) -> Option<&PodKey> {
        self.by_ip.get(&ip)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// All allocations, by address.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &PodKey)> {
        self.by_ip.iter().map(|(ip, pod)| (*ip, pod))
    }

    /// Returns the pod's address and whether it is new (and so must be persisted).
    pub fn allocate(&mut self, pod: &PodKey) -> Result<(Ipv4Addr, bool)> {
        if let Some(ip) = self.get(pod) {
            return Ok((ip, false));
        }
        let capacity = self.cidr.pod_capacity();
        if self.by_ip.len() >= capacity {
            return Err(NetworkError::Exhausted {
                cidr: self.cidr.to_string(),
                in_use: self.by_ip.len(),
            });
        }
        let (first, last) = self.cidr.pod_range();
        let start = match self.last {
            Some(prev) if self.cidr.is_pod_address(prev) && u32::from(prev) < last => {
                u32::from(prev) + 1
            }
            _ => first,
        };
        // A free address exists, so this finds one within `in_use + 1` steps.
        let candidate = (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find(|ip| !self.by_ip.contains_key(ip))
            .ok_or_else(|| NetworkError::Exhausted {
                cidr: self.cidr.to_string(),
                in_use: self.by_ip.len(),
            })?;
        self.by_ip.insert(candidate, pod.clone());
        self.by_pod.insert(pod.clone(), candidate);
        self.last = Some(candidate);
        Ok((candidate, true))
    }

    /// Frees the pod's address; `None` if it had none.
    pub fn release(&mut self, pod: &PodKey) -> Option<Ipv4Addr> {
        let ip = self.by_pod.remove(pod)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    fn to_file(&self) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            cidr: self.cidr.to_string(),
            last: self.last,
            allocations: self
                .by_ip
                .iter()
                .map(|(ip, pod)| Allocation {
                    ip: *ip,
                    pod: pod.clone(),
                })
                .collect(),
        }
    }

    fn from_file(file: StateFile, cidr: Ipv4Cidr, path: &Path) -> Result<Self> {
        let invalid = |reason: String| NetworkError::StateInvalid {
            path: path.to_owned(),
            reason,
        };
        if file.version != STATE_VERSION {
            return Err(invalid(format!(
                "unknown version {} (expected {STATE_VERSION})",
                file.version
            )));
        }
        let stored: Ipv4Cidr = file
            .cidr
            .parse()
            .map_err(|e| invalid(format!("bad cidr: {e}")))?;
        if stored != cidr {
            return Err(NetworkError::CidrMismatch {
                path: path.to_owned(),
                stored: stored.to_string(),
                configured: cidr.to_string(),
            });
        }
        let mut state = IpamState::new(cidr);
        state.last = file.last.filter(|ip| cidr.is_pod_address(*ip));
        for Allocation { ip, pod } in file.allocations {
            if !cidr.is_pod_address(ip) {
                return Err(invalid(format!("{ip} is not a pod address of {cidr}")));
            }
            if state.by_ip.contains_key(&ip) {
                return Err(invalid(format!("{ip} is allocated twice")));
            }
            if state.by_pod.contains_key(&pod) {
                return Err(invalid(format!("pod {pod} holds two addresses")));
            }
            state.by_ip.insert(ip, pod.clone());
            state.by_pod.insert(pod, ip);
        }
        Ok(state)
    }
}

const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    cidr: String,
    #[serde(default)]
    last: Option<Ipv4Addr>,
    allocations: Vec<Allocation>,
}

#[derive(Serialize, Deserialize)]
struct Allocation {
    ip: Ipv4Addr,
    pod: PodKey,
}

/// [`IpamState`] persisted in a JSON file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    state: IpamState,
}

impl Ipam {
    /// Loads the state file at `path`, or starts empty if there is none. The directory is
    /// created on the first write.
    pub fn open(path: impl Into<PathBuf>, cidr: Ipv4Cidr) -> Result<Self> {
        let path = path.into();
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let file: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| NetworkError::StateInvalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                IpamState::from_file(file, cidr, &path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::new(cidr),
            Err(e) => return Err(NetworkError::io("reading IPAM state", &path, e)),
        };
        Ok(Ipam { path, state })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> &IpamState {
        &self.state
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.state.cidr
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.state.cidr.gateway()
    }

    pub fn get(&self, pod: &PodKey) -> Option<Ipv4Addr> {
        self.state.get(pod)
    }

    /// The pod's address: the one it already holds, or a new one, persisted before it is
    /// returned.
    pub fn allocate(&mut self, pod: &PodKey) -> Result<Ipv4Addr> {
        let before = self.state.clone();
        let (ip, new) = self.state.allocate(pod)?;
        if new && let Err(e) = self.persist() {
            self.state = before;
            return Err(e);
        }
        Ok(ip)
    }

    /// Frees the pod's address (persisted before returning); `None` if it held none, which
    /// is not an error: release is idempotent.
    pub fn release(&mut self, pod: &PodKey) -> Result<Option<Ipv4Addr>> {
        let before = self.state.clone();
        let Some(ip) = self.state.release(pod) else {
            return Ok(None);
        };
        if let Err(e) = self.persist() {
            self.state = before;
            return Err(e);
        }
        Ok(Some(ip))
    }

    fn persist(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state.to_file()).map_err(|e| {
            NetworkError::StateInvalid {
                path: self.path.clone(),
                reason: format!("serializing: {e}"),
            }
        })?;
        write_atomically(&self.path, &bytes)
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// content: write a sibling temp file, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` through a sibling temp file renamed over it, so a reader sees
/// the old or the new content; with `durable`, both the file and the directory are fsynced
/// ([`write_atomically`]).
pub(crate) fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| NetworkError::io("creating directory", dir, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = File::create(&tmp).map_err(|e| NetworkError::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
        .map_err(|e| NetworkError::io("writing", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| NetworkError::io("renaming into place", path, e))?;
    if !durable {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| NetworkError::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: u32) -> PodKey {
        PodKey::new("default", format!("pod-{n}"), format!("uid-{n}"))
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_geometry() {
        let c = cidr("10.244.1.0/24");
        assert_eq!(c.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(c.pod_capacity(), 253);
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert!(!c.is_pod_address(c.network()));
        assert!(!c.is_pod_address(c.gateway()));
        assert!(!c.is_pod_address(c.broadcast()));
        assert!(c.is_pod_address(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(cidr("10.0.0.0/30").pod_capacity(), 1);
    }

    #[test]
    fn bad_cidrs_are_errors_not_panics() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/abc",
            "10.0.0.0/33",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "10.0.0.0/0",
            "10.0.0.0/7",
            "10.0.0.1/24",
            "fd00::/64",
            "300.1.1.0/24",
            "10.0.0.0/24/1",
        ] {
            assert!(
                matches!(
                    bad.parse::<Ipv4Cidr>(),
                    Err(NetworkError::InvalidCidr { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast_and_exhausts_cleanly() {
        let c = cidr("10.9.0.0/28");
        let mut s = IpamState::new(c);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..13 {
            let (ip, new) = s.allocate(&pod(n)).unwrap();
            assert!(new);
            assert!(c.is_pod_address(ip), "{ip}");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(s.len(), 13);
        assert!(matches!(
            s.allocate(&pod(99)),
            Err(NetworkError::Exhausted { in_use: 13, .. })
        ));
        // Existing pods still get their address when the pool is full.
        assert!(!s.allocate(&pod(3)).unwrap().1);
    }

    #[test]
    fn allocation_is_idempotent_and_release_frees() {
        let mut s = IpamState::new(cidr("10.9.0.0/24"));
        let (a, _) = s.allocate(&pod(1)).unwrap();
        assert_eq!(s.allocate(&pod(1)).unwrap(), (a, false));
        assert_eq!(s.owner(a), Some(&pod(1)));
        assert_eq!(s.release(&pod(1)), Some(a));
        assert_eq!(s.release(&pod(1)), None);
        assert_eq!(s.get(&pod(1)), None);
        assert!(s.is_empty());
    }

    #[test]
    fn same_name_new_uid_is_another_pod() {
        let mut s = IpamState::new(cidr("10.9.0.0/24"));
        let (a, _) = s.allocate(&PodKey::new("ns", "web", "u1")).unwrap();
        let (b, _) = s.allocate(&PodKey::new("ns", "web", "u2")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn round_robin_does_not_reuse_a_just_released_address() {
        let mut s = IpamState::new(cidr("10.9.0.0/29")); // pods: .2 ..= .6
        let (a, _) = s.allocate(&pod(1)).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        s.release(&pod(1));
        let (b, _) = s.allocate(&pod(2)).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        // Wraps around to the start once the end is reached.
        for n in 3..=5 {
            s.allocate(&pod(n)).unwrap();
        }
        let (w, _) = s.allocate(&pod(6)).unwrap();
        assert_eq!(w, Ipv4Addr::new(10, 9, 0, 2));
    }

    #[test]
    fn persisted_state_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ipam.json");
        let c = cidr("10.244.3.0/24");
        let (a, b) = {
            let mut ipam = Ipam::open(&path, c).unwrap();
            let a = ipam.allocate(&pod(1)).unwrap();
            let b = ipam.allocate(&pod(2)).unwrap();
            (a, b)
        };
        let mut ipam = Ipam::open(&path, c).unwrap();
        assert_eq!(ipam.get(&pod(1)), Some(a));
        assert_eq!(ipam.allocate(&pod(2)).unwrap(), b);
        let new = ipam.allocate(&pod(3)).unwrap();
        assert!(new != a && new != b);
        assert_eq!(ipam.release(&pod(1)).unwrap(), Some(a));
        assert_eq!(ipam.release(&pod(1)).unwrap(), None);
        drop(ipam);
        let ipam = Ipam::open(&path, c).unwrap();
        assert_eq!(ipam.get(&pod(1)), None);
        assert_eq!(ipam.get(&pod(3)), Some(new));
        assert!(!path.with_file_name("ipam.json.tmp").exists());
    }

    #[test]
    fn missing_file_starts_empty_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let ipam = Ipam::open(&path, cidr("10.1.0.0/24")).unwrap();
        assert!(ipam.state().is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn corrupt_or_foreign_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let c = cidr("10.1.0.0/24");

        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            Ipam::open(&path, c),
            Err(NetworkError::StateInvalid { .. })
        ));

        Ipam::open(dir.path().join("other.json"), cidr("10.2.0.0/24"))
            .and_then(|mut i| i.allocate(&pod(1)))
            .unwrap();
        assert!(matches!(
            Ipam::open(dir.path().join("other.json"), c),
            Err(NetworkError::CidrMismatch { .. })
        ));

        let dup = r#"{"version":1,"cidr":"10.1.0.0/24","allocations":[
            {"ip":"10.1.0.2","pod":{"namespace":"a","name":"b","uid":"c"}},
            {"ip":"10.1.0.2","pod":{"namespace":"a","name":"b","uid":"d"}}]}"#;
        fs::write(&path, dup).unwrap();
        assert!(matches!(
            Ipam::open(&path, c),
            Err(NetworkError::StateInvalid { .. })
        ));

        let gateway = r#"{"version":1,"cidr":"10.1.0.0/24","allocations":[
            {"ip":"10.1.0.1","pod":{"namespace":"a","name":"b","uid":"c"}}]}"#;
        fs::write(&path, gateway).unwrap();
        assert!(matches!(
            Ipam::open(&path, c),
            Err(NetworkError::StateInvalid { .. })
        ));
    }

    #[test]
    fn failed_write_leaves_memory_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        let mut ipam = Ipam::open(sub.join("ipam.json"), cidr("10.1.0.0/24")).unwrap();
        // The parent "directory" becomes a file, so every write fails (even as root).
        fs::write(&sub, b"").unwrap();
        assert!(matches!(
            ipam.allocate(&pod(1)),
            Err(NetworkError::Io { .. })
        ));
        assert_eq!(ipam.get(&pod(1)), None);
        assert!(ipam.state().is_empty());
    }

    #[test]
    fn pod_key_validation_and_hash() {
        assert!(pod(1).validate().is_ok());
        for bad in [
            PodKey::new("", "a", "b"),
            PodKey::new("a", "..", "b"),
            PodKey::new("a", "x/y", "b"),
            PodKey::new("a", "x_y", "b"),
            PodKey::new("a", "b", "c d"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(pod(1).stable_hash(), pod(1).stable_hash());
        assert_ne!(pod(1).stable_hash(), pod(2).stable_hash());
        // Part boundaries matter.
        assert_ne!(
            PodKey::new("ab", "c", "d").stable_hash(),
            PodKey::new("a", "bc", "d").stable_hash()
        );
        // Pinned: link names derived from the hash must not change between builds.
        assert_eq!(
            PodKey::new("default", "web", "1").stable_hash(),
            0xd3db_806e
        );
    }
}
