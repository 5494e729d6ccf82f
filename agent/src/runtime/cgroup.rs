//! The few cgroup facts the runtime reads itself: where the hierarchies are mounted, a
//! container's OOM kill count, whether swap is accounted; and removal of cgroup directories the
//! runtime named (leftovers of containers and the node's cgroup parent). runc creates, limits
//! and removes container cgroups; this module never writes a limit.
//!
//! Works on cgroup v1, v2 and the hybrid layout (v1 controllers plus a v2 hierarchy at
//! `/sys/fs/cgroup/unified`).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// A mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// `None` for cgroup v2; the v1 controllers (`memory`, `cpu,cpuacct`, ...) otherwise.
    pub controllers: Option<Vec<String>>,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_none()
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == name))
    }

    /// The directory of cgroup `path` (absolute, e.g. `/ferry/n1/c1`) in this hierarchy.
    pub fn dir(&self, path: &Path) -> PathBuf {
        self.mount_point
            .join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// The cgroup hierarchies mounted in this process's mount namespace.
pub fn hierarchies() -> io::Result<Vec<Hierarchy>> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Parses `/proc/self/mountinfo`; the same hierarchy mounted twice is listed once.
pub fn parse_mountinfo(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // `<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype>
        // <source> <super options>`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rest: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || rest.len() < 3 || fields[3] != "/" {
            continue;
        }
        let mount_point = PathBuf::from(unescape(fields[4]));
        let h = match rest[0] {
            "cgroup2" => Hierarchy {
                mount_point,
                controllers: None,
            },
            "cgroup" => {
                const NOT_CONTROLLERS: [&str; 10] = [
                    "rw",
                    "ro",
                    "relatime",
                    "nosuid",
                    "nodev",
                    "noexec",
                    "xattr",
                    "clone_children",
                    "noprefix",
                    "cpuset_v2_mode",
                ];
                let controllers = rest[2]
                    .split(',')
                    .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.contains('='))
                    .map(str::to_owned)
                    .collect();
                Hierarchy {
                    mount_point,
                    controllers: Some(controllers),
                }
            }
            _ => continue,
        };
        if !out
            .iter()
            .any(|o| o.controllers == h.controllers && h.controllers.is_some())
        {
            out.push(h);
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Number of OOM kills in cgroup `path`, from the memory controller (v1
/// `memory.oom_control`, v2 `memory.events`); `None` when the cgroup or the counter is absent.
pub fn oom_kills(hierarchies: &[Hierarchy], path: &Path) -> Option<u64> {
    let mut found = None;
    for h in hierarchies {
        let file = if h.is_v2() {
            h.dir(path).join("memory.events")
        } else if h.has_controller("memory") {
            h.dir(path).join("memory.oom_control")
        } else {
            continue;
        };
        if let Ok(text) = fs::read_to_string(&file)
            && let Some(n) = parse_oom_kill(&text)
        {
            found = Some(found.unwrap_or(0) + n);
        }
    }
    found
}

fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// Whether the v1 memory controller accounts swap (`memory.memsw.limit_in_bytes` exists).
pub fn swap_accounting(hierarchies: &[Hierarchy]) -> bool {
    hierarchies
        .iter()
        .filter(|h| h.has_controller("memory"))
        .any(|h| h.mount_point.join("memory.memsw.limit_in_bytes").exists())
}

/// Removes the directory of cgroup `path` in every hierarchy where it exists and is empty.
/// Returns the directories that could not be removed (still holding processes or children).
pub fn remove(hierarchies: &[Hierarchy], path: &Path) -> Vec<(PathBuf, io::Error)> {
    let mut left = Vec::new();
    for h in hierarchies {
        let dir = h.dir(path);
        if dir == h.mount_point {
            continue;
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => left.push((dir, e)),
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
28 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,xattr,name=systemd
31 25 0:26 / /mnt/mem\\040x rw - cgroup cgroup rw,memory
32 25 0:26 /sub /mnt/sub rw - cgroup cgroup rw,pids
";

    #[test]
    fn parses_hybrid_layout() {
        let h = parse_mountinfo(HYBRID);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h[0].is_v2());
        assert_eq!(h[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(h[1].has_controller("memory"));
        assert!(h[2].has_controller("cpu") && h[2].has_controller("cpuacct"));
        assert_eq!(h[3].controllers.as_deref(), Some(&[][..]));
        assert_eq!(
            h[1].dir(Path::new("/ferry/n1/c1")),
            Path::new("/sys/fs/cgroup/memory/ferry/n1/c1")
        );
        assert_eq!(unescape("/mnt/mem\\040x"), "/mnt/mem x");
    }

    #[test]
    fn parses_oom_counters() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kill("oom 1\n"), None);
    }
}
