//! Root-only: the TC deny filter acts on real traffic.
//!
//! Two network namespaces joined by a veth; listeners in `b`, clients in `a`; the filter on
//! `b`'s veth ingress. Shows an allowed port passes, a denied port (UDP and TCP) is dropped,
//! the counters move, un-denying and detaching restore traffic. Namespaces are entered with
//! setns(2) on short-lived threads (never `ip netns exec`, which hides /sys/fs/bpf); sockets keep
//! the namespace they were created in, so the main thread can use them afterwards.

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use ferry_agent::datapath::{DenyFilter, DropReason, Protocol};
use nix::sched::{CloneFlags, setns};

/// Every namespace this test creates starts with this; `ferry-tc-<pid>-<n>-{a,b}`.
const PREFIX: &str = "ferry-tc-";
const ADDR_A: &str = "10.213.0.1";
const ADDR_B: &str = "10.213.0.2";
/// Allowed traffic normally arrives in well under a millisecond; this only bounds a failure.
const PASS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait before concluding a packet was dropped.
const DROP_WAIT: Duration = Duration::from_millis(300);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e} (is iproute2 installed?)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces `a` and `b` joined by veth-a <-> veth-b. Deleting a namespace destroys its
/// veth end, and with it the peer, so `Drop` only has to delete the namespaces.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn create() -> Self {
        remove_stale_namespaces();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // The guard exists before the first namespace does, so a failure half-way through
        // still tears down whatever was created.
        let pair = NetnsPair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
        };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "-n", a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b,
        ]);
        for (ns, dev, addr) in [(a, "veth-a", ADDR_A), (b, "veth-b", ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Deletes namespaces left by earlier runs whose process is gone (e.g. killed mid-test).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`.
fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

struct UdpPeers {
    client: UdpSocket,
    servers: Vec<UdpSocket>,
}

impl UdpPeers {
    /// Sends `payload` to `server` and reports whether it arrived within `wait`.
    fn delivered(&self, server: usize, payload: &[u8], wait: Duration) -> bool {
        let dst = self.servers[server].local_addr().unwrap();
        self.client.send_to(payload, dst).unwrap();
        self.servers[server].set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match self.servers[server].recv_from(&mut buf) {
                // Skip stragglers from earlier sends: only this payload proves delivery.
                Ok((n, _)) if &buf[..n] == payload => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(e) => panic!("recv on {dst}: {e}"),
            }
        }
    }
}

fn tcp_connects(client_ns: &str, dst: SocketAddr, wait: Duration) -> bool {
    in_netns(client_ns, move || {
        match TcpStream::connect_timeout(&dst, wait) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => false,
            Err(e) => panic!("connect {dst}: {e} (expected success or a timeout)"),
        }
    })
}

#[test]
fn tc_deny_filter_drops_denied_ports_and_counts() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED tc_deny_filter_drops_denied_ports_and_counts: needs root (netns, eBPF)");
        return;
    }
    let net = NetnsPair::create();
    let (ns_a, ns_b) = (net.a.clone(), net.b.clone());

    // Ports 0 = allowed UDP, 1 = denied UDP (then allowed again); TCP: allowed, denied.
    let (udp_servers, tcp_allowed, tcp_denied) = in_netns(&ns_b, || {
        let udp: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind((ADDR_B, 0)).expect("bind udp"))
            .collect();
        let tcp_allowed = TcpListener::bind((ADDR_B, 0)).expect("bind tcp");
        let tcp_denied = TcpListener::bind((ADDR_B, 0)).expect("bind tcp");
        (udp, tcp_allowed, tcp_denied)
    });
    let client = in_netns(&ns_a, || {
        UdpSocket::bind((ADDR_A, 0)).expect("bind udp client")
    });
    let udp = UdpPeers {
        client,
        servers: udp_servers,
    };
    let udp_denied_port = udp.servers[1].local_addr().unwrap().port();
    let tcp_allowed_addr = tcp_allowed.local_addr().unwrap();
    let tcp_denied_addr = tcp_denied.local_addr().unwrap();

    // Baseline without the filter: both UDP ports are reachable (and ARP is resolved).
    assert!(udp.delivered(0, b"base-0", PASS_TIMEOUT));
    assert!(udp.delivered(1, b"base-1", PASS_TIMEOUT));

    let mut filter = in_netns(&ns_b, || DenyFilter::attach("veth-b")).expect("attach filter");
    filter.deny_port(udp_denied_port, Protocol::Udp).unwrap();
    filter
        .deny_port(tcp_denied_addr.port(), Protocol::Tcp)
        .unwrap();
    // A UDP rule must not match TCP to the same port number and vice versa.
    filter
        .deny_port(tcp_allowed_addr.port(), Protocol::Udp)
        .unwrap();

    assert!(
        udp.delivered(0, b"allowed-1", PASS_TIMEOUT),
        "allowed UDP port was dropped"
    );
    for i in 0..3 {
        let payload = format!("denied-{i}");
        assert!(
            !udp.delivered(1, payload.as_bytes(), DROP_WAIT),
            "UDP to denied port {udp_denied_port} arrived"
        );
    }
    assert!(
        udp.delivered(0, b"allowed-2", PASS_TIMEOUT),
        "allowed UDP port was dropped"
    );
    assert!(
        tcp_connects(&ns_a, tcp_allowed_addr, PASS_TIMEOUT),
        "TCP connect to allowed {tcp_allowed_addr} timed out"
    );
    // Shorter than the first SYN retransmission (1 s): exactly one SYN is dropped.
    assert!(
        !tcp_connects(&ns_a, tcp_denied_addr, DROP_WAIT),
        "TCP connect to denied {tcp_denied_addr} succeeded"
    );

    let counters = filter.counters().unwrap();
    eprintln!("counters: {counters:?}");
    let denied = counters.drops(DropReason::DeniedPort);
    assert!(denied >= 4, "3 UDP + 1 TCP SYN denied, counted {denied}");
    assert_eq!(counters.drops(DropReason::Malformed), 0);
    assert_eq!(
        counters.dropped.packets,
        denied + counters.drops(DropReason::Malformed),
        "every drop is counted under exactly one reason"
    );
    assert!(counters.dropped.bytes >= 42 * denied, "{counters:?}");
    // At least allowed-1, allowed-2 (both received) and the allowed SYN (answered); the
    // handshake's last ACK may still be in the receiver's backlog.
    assert!(counters.passed.packets >= 3, "{counters:?}");
    assert!(
        counters.passed.bytes > counters.passed.packets * 42,
        "{counters:?}"
    );

    filter.allow_port(udp_denied_port, Protocol::Udp).unwrap();
    assert!(
        udp.delivered(1, b"re-allowed", PASS_TIMEOUT),
        "allow_port did not take effect"
    );

    // Dropping the filter detaches it, here from a thread outside its namespace.
    drop(filter);
    assert!(
        tcp_connects(&ns_a, tcp_denied_addr, PASS_TIMEOUT),
        "TCP still dropped after the filter was dropped"
    );
}
