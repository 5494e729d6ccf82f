//! The netlink requests of the pod network, each a small async function over an
//! `rtnetlink::Handle` whose socket lives in the namespace the request is meant for.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
};

use super::{
    error::{NetworkError, Result},
    netns::NetnsHandle,
};

/// Name of the pod side of the veth pair inside the pod's namespace.
pub const POD_IFNAME: &str = "eth0";

/// A locally administered unicast MAC derived from an IPv4 address (`0a:58:` + the address).
/// Deterministic MACs keep neighbours' ARP caches right when the bridge's port set changes or
/// an address moves to a new pod.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(Errno::from_raw(-m.raw_code())),
        _ => None,
    }
}

pub fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("looking up link {name}"), e)),
    }
}

async fn require_link(handle: &Handle, name: &str) -> Result<LinkMessage> {
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| NetworkError::InvalidInput {
            what: "link",
            value: name.to_owned(),
            reason: "does not exist",
        })
}

/// Deletes the link called `name`; whether it existed. Deleting one end of a veth pair
/// deletes both.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(false),
        Err(e) => Err(NetworkError::netlink(format!("deleting link {name}"), e)),
    }
}

/// Makes the bridge exist and be up, with a fixed MAC and `gateway/prefix` on it (which also
/// gives the node the connected route to the pod CIDR). Returns its interface index.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<u32> {
    let link = match link_by_name(handle, name).await? {
        Some(link) => {
            match link_kind(&link) {
                Some(InfoKind::Bridge) => {}
                other => {
                    return Err(NetworkError::LinkKind {
                        name: name.to_owned(),
                        expected: "bridge",
                        found: other
                            .map_or_else(|| "link of unknown kind".into(), |k| k.to_string()),
                    });
                }
            }
            link
        }
        None => {
            // A bridge with an explicitly set MAC keeps it; otherwise it takes the lowest MAC
            // of its ports, changing whenever a pod comes or goes and making the pods' ARP
            // entries for the gateway stale.
            let msg = LinkBridge::new(name)
                .address(mac_for(gateway).to_vec())
                .build();
            match handle.link().add(msg).execute().await {
                Ok(()) => {}
                // Another agent thread or process made it meanwhile.
                Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
                Err(e) => return Err(NetworkError::netlink(format!("creating bridge {name}"), e)),
            }
            require_link(handle, name).await?
        }
    };
    let index = link.header.index;
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("setting bridge {name} up"), e))?;
    handle
        .address()
        .add(index, IpAddr::V4(gateway), prefix)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetworkError::netlink(format!("adding {gateway}/{prefix} to bridge {name}"), e)
        })?;
    Ok(index)
}

/// Creates the veth pair `host_ifname` <-> `eth0`, the pod end created directly inside
/// `pod_ns` (one request, so no half-moved pair with a temporary name is ever visible) with
/// `pod_mac`, the host end attached to `bridge_index` and up.
pub async fn create_pod_veth(
    handle: &Handle,
    host_ifname: &str,
    bridge_index: u32,
    pod_ns: &NetnsHandle,
    pod_mac: [u8; 6],
) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(POD_IFNAME)
        .address(pod_mac.to_vec())
        .setns_by_fd(pod_ns.as_fd().as_raw_fd())
        .build();
    let msg = LinkVeth::new(host_ifname, POD_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge_index)
        .up()
        .build();
    handle.link().add(msg).execute().await.map_err(|e| {
        NetworkError::netlink(
            format!(
                "creating veth {host_ifname} <-> {POD_IFNAME} in {}",
                pod_ns.path().display()
            ),
            e,
        )
    })
}

/// Inside the pod's namespace: lo and eth0 up, `ip/prefix` on eth0, default route via
/// `gateway`. Returns eth0's MAC.
pub async fn configure_pod_side(
    handle: &Handle,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<Vec<u8>> {
    let lo = require_link(handle, "lo").await?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(lo.header.index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink("setting lo up", e))?;

    let eth0 = require_link(handle, POD_IFNAME).await?;
    let index = eth0.header.index;
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("adding {ip}/{prefix} to {POD_IFNAME}"), e))?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("setting {POD_IFNAME} up"), e))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("adding default route via {gateway}"), e))?;
    Ok(link_mac(&eth0).unwrap_or_default().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let mac = mac_for(Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(format_mac(&mac), "0a:58:0a:f4:01:07");
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0b11, 0b10);
    }
}
