//! L2 announcement of LoadBalancer addresses, as MetalLB's L2 mode and Cilium's L2
//! announcements do: for each address exactly one node answers ARP requests for it on its uplink
//! (`ferry_from_uplink`, `FERRY_L2_ANNOUNCE4`), so clients on the nodes' network reach the
//! address without a route, and that node's TC programs take the traffic from there.
//!
//! The node is chosen without any write: every agent ranks the eligible nodes for each address
//! by rendezvous hashing (FNV-1a of the address and the node name; the highest wins) over the
//! same Node and EndpointSlice objects, so all agree. Eligible: Ready nodes not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`; for `externalTrafficPolicy: Local`
//! only those with a ready endpoint of the service (others would drop the traffic). When the
//! announcing node is lost (NotReady after the node monitor's grace period) or loses its
//! endpoints, the next in rank takes over and sends a gratuitous ARP ([`gratuitous_arp`]), so
//! clients that cached the old node's MAC move at once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde_json::Value;

use super::maglev::fnv1a;

const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The rendezvous rank of `node` for `addr`.
fn rank(addr: Ipv4Addr, node: &str) -> u64 {
    let mut key = addr.octets().to_vec();
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    fnv1a(0xcbf2_9ce4_8422_2325, &key)
}

/// The LoadBalancer addresses node `me` announces.
pub fn announced(
    services: &[Value],
    slices: &[Value],
    nodes: &[Value],
    me: &str,
) -> BTreeSet<Ipv4Addr> {
    let eligible: Vec<&str> = nodes
        .iter()
        .filter(|n| {
            ready(n)
                && n.pointer(&format!(
                    "/metadata/labels/{}",
                    EXCLUDE_LABEL.replace('/', "~1")
                ))
                .is_none()
        })
        .map(|n| s(n, "/metadata/name"))
        .collect();
    let mut out = BTreeSet::new();
    for svc in services {
        if s(svc, "/spec/type") != "LoadBalancer" {
            continue;
        }
        let (ns, name) = (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"));
        let local_only = s(svc, "/spec/externalTrafficPolicy") == "Local";
        let with_endpoints: BTreeSet<&str> = if local_only {
            slices
                .iter()
                .filter(|sl| {
                    s(sl, "/metadata/namespace") == ns
                        && s(sl, "/metadata/labels/kubernetes.io~1service-name") == name
                })
                .flat_map(|sl| sl["endpoints"].as_array().into_iter().flatten())
                .filter(|ep| ep["conditions"]["ready"].as_bool().unwrap_or(true))
                .filter_map(|ep| ep["nodeName"].as_str())
                .collect()
        } else {
            BTreeSet::new()
        };
        let candidates: Vec<&str> = eligible
            .iter()
            .copied()
            .filter(|n| !local_only || with_endpoints.contains(n))
            .collect();
        for ip in svc
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse::<Ipv4Addr>().ok())
        {
            let winner = candidates.iter().max_by_key(|n| (rank(ip, n), **n));
            if winner == Some(&me) {
                out.insert(ip);
            }
        }
    }
    out
}

/// The gratuitous ARP (a broadcast request for `ip` from `ip` at `mac`) a node sends when it
/// starts announcing `ip`: neighbours that have `ip` cached update it to `mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends [`garp_frame`] out of interface `ifname` (a raw packet socket in this process's
/// network namespace).
pub fn gratuitous_arp(ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(std::io::Error::from)?;
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: a plain socket(2) call; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = garp_frame(mac, ip);
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, ready: bool, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
               "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"Unknown"}}]}})
    }

    fn lb(name: &str, ip: &str, policy: &str) -> Value {
        json!({"metadata": {"namespace": "default", "name": name},
               "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy},
               "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
    }

    #[test]
    fn exactly_one_ready_node_announces_each_address() {
        let nodes = vec![
            node("n0", true, json!({})),
            node("n1", true, json!({})),
            node("n2", true, json!({})),
        ];
        let services: Vec<Value> = (0..20)
            .map(|i| {
                lb(
                    &format!("s{i}"),
                    &format!("192.168.77.{}", 10 + i),
                    "Cluster",
                )
            })
            .collect();
        let per: Vec<BTreeSet<Ipv4Addr>> = ["n0", "n1", "n2"]
            .iter()
            .map(|me| announced(&services, &[], &nodes, me))
            .collect();
        let total: usize = per.iter().map(BTreeSet::len).sum();
        assert_eq!(total, 20, "every address once: {per:?}");
        assert!(
            per.iter().all(|p| !p.is_empty()),
            "spread over the nodes: {per:?}"
        );
        // n1 is lost: its addresses move, the others stay where they were.
        let mut lost = nodes.clone();
        lost[1] = node("n1", false, json!({}));
        let after: Vec<BTreeSet<Ipv4Addr>> = ["n0", "n1", "n2"]
            .iter()
            .map(|me| announced(&services, &[], &lost, me))
            .collect();
        assert!(after[1].is_empty());
        assert!(per[0].is_subset(&after[0]) && per[2].is_subset(&after[2]));
        assert_eq!(after[0].len() + after[2].len(), 20);
        // Excluded nodes never announce.
        let excluded = vec![
            node("n0", true, json!({EXCLUDE_LABEL: ""})),
            node("n1", true, json!({})),
        ];
        assert!(announced(&services, &[], &excluded, "n0").is_empty());
        assert_eq!(announced(&services, &[], &excluded, "n1").len(), 20);
    }

    #[test]
    fn local_policy_announces_from_a_node_with_an_endpoint() {
        let nodes = vec![
            node("n0", true, json!({})),
            node("n1", true, json!({})),
            node("n2", true, json!({})),
        ];
        let slice = json!({"metadata": {"namespace": "default", "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [{"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": true}}]});
        let services = [lb("web", "192.168.77.240", "Local")];
        assert!(announced(&services, std::slice::from_ref(&slice), &nodes, "n0").is_empty());
        assert!(announced(&services, std::slice::from_ref(&slice), &nodes, "n1").is_empty());
        assert_eq!(announced(&services, &[slice], &nodes, "n2").len(), 1);
        // No endpoint anywhere: nobody announces.
        assert!(
            ["n0", "n1", "n2"]
                .iter()
                .all(|me| announced(&services, &[], &nodes, me).is_empty())
        );
    }

    #[test]
    fn gratuitous_arp_announces_the_address_from_itself() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 77, 240));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[28..32], &[192, 168, 77, 240]);
        assert_eq!(&f[38..42], &[192, 168, 77, 240]);
    }
}
