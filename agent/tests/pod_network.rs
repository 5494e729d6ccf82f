//! Root-only: the pod network on real namespaces, links and sockets.
//!
//! A bridge and three pods, each in its own named namespace; checks from inside each pod (on a
//! thread that entered it with setns(2)) that eth0 has the allocated address, lo and eth0 are
//! up and the default route points at the gateway; TCP echo from pod to pod through the bridge
//! and from every pod to the gateway; an agent restart (a new `PodNetwork` over the same data
//! directory) that must not hand out a live address; teardown that removes the namespace and
//! the veth and frees the address, twice without error.
//!
//! Every name carries this process's pid; a guard removes everything on the way out, also when
//! an assertion fails, and namespaces and bridges of earlier runs whose process is gone are
//! removed first.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use ferry_agent::network::{
    DnsConfig, Ipv4Cidr, NetnsHandle, PodKey, PodNetConfig, PodNetRequest, PodNetwork,
    PodNetworkOptions, link, netns,
};
use nix::{
    ifaddrs::getifaddrs,
    net::if_::InterfaceFlags,
    sched::{CloneFlags, setns},
    unistd::Uid,
};

const NETNS_DIR: &str = "/run/netns";
/// Namespaces are `fpn<pid>-<n>`, the bridge `fpnb<pid>`.
const NETNS_PREFIX: &str = "fpn";
const BRIDGE_PREFIX: &str = "fpnb";
const IO_TIMEOUT: Duration = Duration::from_secs(3);

struct Names {
    pid: u32,
    bridge: String,
    veth_prefix: String,
    cidr: Ipv4Cidr,
}

impl Names {
    fn new() -> Self {
        let pid = std::process::id();
        Names {
            pid,
            bridge: format!("{BRIDGE_PREFIX}{pid}"),
            // 7 bytes at most: `f` and the pid in hex (pid_max is 2^22).
            veth_prefix: format!("f{pid:06x}"),
            cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 250, (pid % 200) as u8, 0), 24).unwrap(),
        }
    }

    fn netns(&self, n: u32) -> String {
        format!("{NETNS_PREFIX}{}-{n}", self.pid)
    }
}

/// Removes this run's namespaces, veths and bridge when dropped, and those of dead earlier
/// runs when created.
struct Guard {
    pid: u32,
    bridge: String,
    veth_prefix: String,
}

impl Guard {
    fn new(names: &Names) -> Self {
        let me = names.pid;
        cleanup(
            move |pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists(),
            None,
        );
        Guard {
            pid: names.pid,
            bridge: names.bridge.clone(),
            veth_prefix: names.veth_prefix.clone(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.pid;
        cleanup(
            move |p| p == pid,
            Some((self.bridge.clone(), self.veth_prefix.clone())),
        );
    }
}

/// Removes namespaces `fpn<pid>-*` and bridges `fpnb<pid>` whose pid matches, plus this run's
/// veths. Runs on its own thread with its own runtime: it may be called while unwinding out of
/// another runtime.
fn cleanup(matches: impl Fn(u32) -> bool + Send + 'static, own: Option<(String, String)>) {
    let result = thread::spawn(move || {
        let pid_of = |name: &str, prefix: &str| -> Option<u32> {
            let rest = name.strip_prefix(prefix)?;
            rest.split('-').next()?.parse().ok()
        };
        if let Ok(entries) = fs::read_dir(NETNS_DIR) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(BRIDGE_PREFIX) {
                    continue;
                }
                if pid_of(&name, NETNS_PREFIX).is_some_and(&matches) {
                    let _ = netns::remove_netns(&e.path());
                }
            }
        }
        let mut links: Vec<String> = fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| pid_of(n, BRIDGE_PREFIX).is_some_and(&matches))
                    .collect()
            })
            .unwrap_or_default();
        if let Some((bridge, veth_prefix)) = &own {
            links.push(bridge.clone());
            if let Ok(d) = fs::read_dir("/sys/class/net") {
                links.extend(
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(veth_prefix.as_str())),
                );
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let host = NetnsHandle::current().unwrap();
            netns::with_netlink_in(&host, "test cleanup", move |h| async move {
                for name in links {
                    let _ = link::delete_link(&h, &name).await;
                }
                Ok(())
            })
            .await
        })
    })
    .join();
    if !matches!(result, Ok(Ok(()))) {
        eprintln!("pod_network test cleanup failed: {result:?}");
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`.
fn in_netns<R: Send + 'static>(path: &Path, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = path.to_owned();
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        setns(&fd, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What a pod's namespace looks like from inside.
#[derive(Debug)]
struct Inside {
    eth0_addrs: Vec<(Ipv4Addr, Ipv4Addr)>,
    eth0_mac: Option<[u8; 6]>,
    eth0_up: bool,
    lo_up: bool,
    default_gateway: Option<Ipv4Addr>,
    links: BTreeSet<String>,
}

fn look_inside(netns: &Path) -> Inside {
    in_netns(netns, || {
        let mut inside = Inside {
            eth0_addrs: Vec::new(),
            eth0_mac: None,
            eth0_up: false,
            lo_up: false,
            default_gateway: None,
            links: BTreeSet::new(),
        };
        for ifa in getifaddrs().expect("getifaddrs") {
            inside.links.insert(ifa.interface_name.clone());
            let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
            match ifa.interface_name.as_str() {
                "lo" => inside.lo_up |= up,
                "eth0" => {
                    inside.eth0_up |= up;
                    if let Some(addr) = ifa.address {
                        if let Some(v4) = addr.as_sockaddr_in() {
                            let mask = ifa
                                .netmask
                                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip()))
                                .unwrap_or(Ipv4Addr::UNSPECIFIED);
                            inside.eth0_addrs.push((v4.ip(), mask));
                        } else if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
                            inside.eth0_mac = Some(mac);
                        }
                    }
                }
                _ => {}
            }
        }
        // /proc/thread-self/net follows this thread's namespace. Columns: Iface Destination
        // Gateway Flags ...; addresses are hex in host (little-endian) byte order.
        let routes = fs::read_to_string("/proc/thread-self/net/route").expect("route table");
        for line in routes.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 2 && cols[0] == "eth0" && cols[1] == "00000000" {
                let gw = u32::from_str_radix(cols[2], 16).expect("gateway hex");
                inside.default_gateway = Some(Ipv4Addr::from(gw.to_le_bytes()));
            }
        }
        inside
    })
}

/// Echo server for every connection accepted on `listener`, in the background.
fn serve_echo(listener: TcpListener) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// From inside `netns`, connects to `to` and checks a round trip.
fn echo_from(netns: &Path, to: SocketAddr) -> Result<(), String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let msg = format!("hello {to}");
        s.write_all(msg.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .map_err(|e| format!("read from {to}: {e}"))?;
        if back != msg.as_bytes() {
            return Err(format!("echo from {to} differs"));
        }
        Ok(())
    })
}

fn request(names: &Names, n: u32) -> PodNetRequest {
    PodNetRequest {
        pod: PodKey::new(
            "default",
            format!("web-{n}"),
            format!("uid-{}-{n}", names.pid),
        ),
        netns: names.netns(n),
        hostname: format!("web-{n}"),
        dns: DnsConfig {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        },
    }
}

fn check_pod(cfg: &PodNetConfig, names: &Names) {
    let inside = look_inside(&cfg.netns_path);
    assert_eq!(
        inside.eth0_addrs,
        vec![(cfg.ip, Ipv4Addr::new(255, 255, 255, 0))],
        "{inside:?}"
    );
    assert!(inside.eth0_up && inside.lo_up, "{inside:?}");
    assert_eq!(
        inside.default_gateway,
        Some(names.cidr.gateway()),
        "{inside:?}"
    );
    assert_eq!(
        inside.eth0_mac.map(|m| link::format_mac(&m)).as_deref(),
        Some(cfg.mac.as_str())
    );
    assert_eq!(
        inside.links,
        BTreeSet::from(["eth0".to_string(), "lo".to_string()]),
        "only lo and eth0 in the pod"
    );
}

#[test]
fn pod_network_end_to_end() {
    if !Uid::effective().is_root() {
        eprintln!("SKIPPED pod_network_end_to_end: needs root (network namespaces, links, mounts)");
        return;
    }
    let started = Instant::now();
    let names = Names::new();
    let _guard = Guard::new(&names);
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(&names, data.path().to_owned()));
    eprintln!("pod_network_end_to_end took {:?}", started.elapsed());
}

async fn scenario(names: &Names, data_dir: PathBuf) {
    let mut opts = PodNetworkOptions::new(names.cidr, &data_dir);
    opts.bridge = names.bridge.clone();
    opts.veth_prefix = names.veth_prefix.clone();
    let gateway = names.cidr.gateway();

    let net = PodNetwork::new(opts.clone())
        .await
        .expect("creating the pod network");
    assert!(Path::new("/sys/class/net").join(&names.bridge).exists());
    // A second construction over an existing bridge is fine.
    drop(
        PodNetwork::new(opts.clone())
            .await
            .expect("bridge already there"),
    );

    let t = Instant::now();
    let mut cfgs = Vec::new();
    for n in 0..3 {
        cfgs.push(net.setup(&request(names, n)).await.expect("setup"));
    }
    eprintln!("3 pods set up in {:?}", t.elapsed());

    let ips: BTreeSet<Ipv4Addr> = cfgs.iter().map(|c| c.ip).collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {cfgs:?}");
    for (n, cfg) in (0..).zip(&cfgs) {
        assert!(names.cidr.is_pod_address(cfg.ip), "{cfg:?}");
        assert_eq!((cfg.gateway, cfg.prefix), (gateway, 24));
        assert!(cfg.host_veth.starts_with(&names.veth_prefix) && cfg.host_veth.len() <= 15);
        assert_eq!(cfg.netns_path, Path::new(NETNS_DIR).join(names.netns(n)));
        assert!(netns::is_netns(&cfg.netns_path));
        let master = fs::read_link(format!("/sys/class/net/{}/master", cfg.host_veth))
            .expect("host veth has a master");
        assert_eq!(
            master.file_name().unwrap().to_str(),
            Some(names.bridge.as_str())
        );
        assert_eq!(
            fs::read_to_string(cfg.etc_dir.join("hostname")).unwrap(),
            format!("web-{n}\n")
        );
        let resolv = fs::read_to_string(cfg.etc_dir.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 10.96.0.10\n"), "{resolv}");
        assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local\n"));
        assert!(resolv.contains("options ndots:5\n"));
        assert!(
            fs::read_to_string(cfg.etc_dir.join("hosts"))
                .unwrap()
                .contains(&format!("{}\tweb-{n}\n", cfg.ip))
        );
    }

    // Setting up a pod again keeps its address and namespace.
    let again = net.setup(&request(names, 0)).await.expect("setup again");
    assert_eq!(again, cfgs[0]);

    for cfg in &cfgs {
        check_pod(cfg, names);
    }

    // Pod to pod through the bridge: a listener in each pod, reached from every other pod.
    let mut pod_addrs = Vec::new();
    for cfg in &cfgs {
        let ip = cfg.ip;
        let listener = in_netns(&cfg.netns_path, move || TcpListener::bind((ip, 0)).unwrap());
        pod_addrs.push(listener.local_addr().unwrap());
        serve_echo(listener);
    }
    // Pod to gateway: a listener on the bridge address in the node's namespace.
    let gw_listener = TcpListener::bind((gateway, 0)).expect("bind the gateway address");
    let gw_addr = gw_listener.local_addr().unwrap();
    serve_echo(gw_listener);
    for (i, from) in cfgs.iter().enumerate() {
        for (j, to) in pod_addrs.iter().enumerate() {
            if i != j {
                echo_from(&from.netns_path, *to)
                    .unwrap_or_else(|e| panic!("pod {i} -> pod {j}: {e}"));
            }
        }
        echo_from(&from.netns_path, gw_addr).unwrap_or_else(|e| panic!("pod {i} -> gateway: {e}"));
    }

    // Agent restart: a new PodNetwork over the same data directory knows the live addresses.
    drop(net);
    let net = PodNetwork::new(opts.clone())
        .await
        .expect("restarted pod network");
    let state = net.ipam_state();
    assert_eq!(state.len(), 3);
    for (n, cfg) in (0..).zip(&cfgs) {
        assert_eq!(state.get(&request(names, n).pod), Some(cfg.ip));
    }
    let fourth = net
        .setup(&request(names, 3))
        .await
        .expect("setup after restart");
    assert!(!ips.contains(&fourth.ip), "{} was live", fourth.ip);
    check_pod(&fourth, names);
    echo_from(&fourth.netns_path, pod_addrs[0]).expect("new pod reaches an old one");

    // Teardown removes the veth, the namespace, the pod's files and the address.
    let gone = request(names, 1).pod;
    net.teardown(&gone).await.expect("teardown");
    assert!(!cfgs[1].netns_path.exists(), "namespace file still there");
    assert!(
        !Path::new("/sys/class/net")
            .join(&cfgs[1].host_veth)
            .exists(),
        "host veth still there"
    );
    assert!(!cfgs[1].etc_dir.exists());
    assert_eq!(net.ipam_state().get(&gone), None);
    net.teardown(&gone).await.expect("teardown is idempotent");
    // The other pods are untouched.
    echo_from(&cfgs[2].netns_path, pod_addrs[0]).expect("pod 2 -> pod 0 after a teardown");

    for n in [0, 2, 3] {
        net.teardown(&request(names, n).pod)
            .await
            .expect("teardown");
    }
    assert!(net.ipam_state().is_empty());
    let leftovers: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&names.veth_prefix))
        .collect();
    assert!(leftovers.is_empty(), "veths left: {leftovers:?}");
    for n in 0..4 {
        assert!(!Path::new(NETNS_DIR).join(names.netns(n)).exists());
    }
    net.remove_bridge().await.expect("removing the bridge");
    assert!(!Path::new("/sys/class/net").join(&names.bridge).exists());
}
