//! What the node reports about itself: capacity, addresses and system info, read from /proc and
//! /etc (no shelling out).

use std::net::IpAddr;

/// Kubernetes' default pod capacity per node.
pub const MAX_PODS: u32 = 110;

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// MemTotal in KiB.
pub fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn kernel_version() -> String {
    read_trim("/proc/sys/kernel/osrelease")
}

pub fn boot_id() -> String {
    read_trim("/proc/sys/kernel/random/boot_id")
}

pub fn machine_id() -> String {
    read_trim("/etc/machine-id")
}

pub fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Kubernetes' architecture names.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The local address this host uses to reach `server` (host:port): the node's InternalIP when
/// none is given. A UDP "connect" sends nothing; it only asks the kernel for the route.
pub fn local_ip_towards(server: &str) -> Option<IpAddr> {
    let target = server.split(',').next()?.trim();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(target).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}
