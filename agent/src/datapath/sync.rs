//! Keeps this node's service maps in step with the cluster: lists and watches Services and
//! EndpointSlices, and after every change (coalesced for a few milliseconds) recomputes the
//! desired frontends ([`super::services::desired`]) and applies the difference
//! ([`super::socklb::SockLb::sync`]); also keeps the health check node ports
//! ([`super::health`]) open.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_api::client::Client;
use serde_json::Value;
use tokio::sync::watch;

use ferry_api::informer::AbortOnDrop;

use super::{DatapathError, conntrack, health, l2, services, socklb::SockLb};
use crate::informer::{Informer, lock};

/// How long changes are gathered before the maps are written.
const COALESCE: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Where the maps and links are pinned.
    pub pin_dir: PathBuf,
    /// The cgroup-v2 directory the socket programs attach to.
    pub cgroup: PathBuf,
    /// This node's addresses (NodePort frontends).
    pub node_ips: Vec<Ipv4Addr>,
    /// This node's name (the endpoints traffic policies `Local` keep).
    pub node_name: String,
    /// Where traffic from outside arrives, if north-south translation is on.
    pub uplink: Option<super::socklb::Uplink>,
}

/// Loads and attaches the socket load balancer, then keeps its maps in sync until dropped.
pub async fn run(client: Client, opts: SyncOptions) -> Result<(), DatapathError> {
    let o = opts.clone();
    let lb = tokio::task::spawn_blocking(move || -> Result<SockLb, DatapathError> {
        let mut lb = SockLb::load(&o.pin_dir, &o.cgroup, o.uplink.as_ref())?;
        lb.set_node_ips(&o.node_ips)?;
        Ok(lb)
    })
    .await
    .map_err(|e| DatapathError::io("loading", &opts.pin_dir, std::io::Error::other(e)))??;
    tracing::info!(
        pin_dir = %opts.pin_dir.display(),
        cgroup = %opts.cgroup.display(),
        uplink = opts.uplink.as_ref().map_or("none", |u| u.ifname.as_str()),
        acceleration = ?opts.uplink.as_ref().map(|u| u.acceleration),
        "service load balancing attached"
    );
    let lb = Arc::new(Mutex::new(lb));
    // L2 announcements need the uplink's MAC (and the TC program on it).
    let mac = match &opts.uplink {
        Some(up) => {
            let mac = uplink_mac(&up.ifname).await;
            if mac.is_none() {
                tracing::warn!(uplink = %up.ifname, "no MAC address on the uplink: LoadBalancer addresses are not announced");
            }
            mac
        }
        None => None,
    };
    let (changed_tx, mut changed) = watch::channel(0u64);
    let start = |kind| Informer::start(client.clone(), kind, changed_tx.clone());
    let (nodes, services, slices) = (start("Node"), start("Service"), start("EndpointSlice"));
    // Write nothing until both kinds are listed: a half view would drop live frontends.
    services.wait_synced().await;
    slices.wait_synced().await;
    let mut first = true;
    // The node addresses last written to the map.
    let mut written_peers: Vec<std::net::Ipv4Addr> = Vec::new();
    let mut health_checks = health::HealthChecks::default();
    let _sweeper = AbortOnDrop(tokio::spawn(sweep_conntrack(lb.clone())));
    loop {
        tokio::time::sleep(COALESCE).await;
        changed.borrow_and_update();
        let started = Instant::now();
        let svcs: Vec<Value> = lock(&services.cache)
            .values()
            .map(|v| Value::clone(v))
            .collect();
        let eps: Vec<Value> = lock(&slices.cache)
            .values()
            .map(|v| Value::clone(v))
            .collect();
        let desired = services::desired(&svcs, &eps, &opts.node_name);
        health_checks.apply(&health::wanted(&svcs, &eps, &opts.node_name));
        let uplink = opts.uplink.as_ref().map(|u| u.ifname.clone());
        let announce = mac.zip(uplink).map(|(mac, ifname)| {
            let nodes: Vec<Value> = lock(&nodes.cache)
                .values()
                .map(|v| Value::clone(v))
                .collect();
            (
                l2::announced(&svcs, &eps, &nodes, &opts.node_name),
                mac,
                ifname,
            )
        });
        // Every node's addresses: pods' traffic to them is never masqueraded (written when
        // they change, not on every service change).
        let mut peers: Vec<std::net::Ipv4Addr> = lock(&nodes.cache)
            .values()
            .flat_map(|n| {
                n.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a["address"].as_str().and_then(|s| s.parse().ok()))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let new_peers = (peers != written_peers).then(|| peers.clone());
        let lb2 = lb.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut lb = lb2.lock().unwrap_or_else(|p| p.into_inner());
            let peers_ok = match new_peers {
                Some(peers) => match lb.set_peer_ips(&peers) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("writing the nodes' addresses: {e}");
                        false
                    }
                },
                None => true,
            };
            let report = lb.sync(&desired);
            if let Some((addrs, mac, ifname)) = announce {
                match lb.set_l2_announcements(&addrs, mac) {
                    Ok((added, removed)) if !added.is_empty() || !removed.is_empty() => {
                        tracing::info!(?added, ?removed, "LoadBalancer addresses announced (ARP)");
                        // Neighbours that cached another node for these addresses move now.
                        for ip in added {
                            if let Err(e) = l2::gratuitous_arp(&ifname, mac, ip) {
                                tracing::warn!(%ip, uplink = %ifname, "gratuitous ARP: {e}");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("announcing LoadBalancer addresses: {e}"),
                }
            }
            report.map(|r| (r, peers_ok))
        })
        .await;
        match r {
            Ok(Ok((report, peers_ok))) => {
                if peers_ok {
                    written_peers = peers;
                }
                if first || report.writes + report.deletes > 0 {
                    tracing::info!(
                        frontends = report.frontends,
                        backends = report.backends,
                        writes = report.writes,
                        deletes = report.deletes,
                        took_us = started.elapsed().as_micros() as u64,
                        "service maps synced"
                    );
                }
                first = false;
            }
            Ok(Err(e)) => tracing::error!("syncing service maps: {e}"),
            Err(e) => tracing::error!("syncing service maps: {e}"),
        }
        if changed.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Sweeps the north-south connection tracking every [`conntrack::SWEEP_EVERY`] (from the
/// first sync on, which decides the live backends).
async fn sweep_conntrack(lb: Arc<Mutex<SockLb>>) {
    let timeouts = conntrack::Timeouts::default();
    loop {
        tokio::time::sleep(conntrack::SWEEP_EVERY).await;
        let lb = lb.clone();
        let r = tokio::task::spawn_blocking(move || {
            lb.lock()
                .unwrap_or_else(|p| p.into_inner())
                .sweep_conntrack(&timeouts)
        })
        .await;
        match r {
            Ok(report) if report.expired + report.orphaned > 0 => tracing::debug!(
                scanned = report.scanned,
                expired = report.expired,
                orphaned = report.orphaned,
                "connection tracking swept"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping connection tracking: {e}"),
        }
    }
}

/// The MAC address of interface `ifname` (netlink, in this process's network namespace).
async fn uplink_mac(ifname: &str) -> Option<[u8; 6]> {
    let (conn, handle, _) = rtnetlink::new_connection().ok()?;
    let task = tokio::spawn(conn);
    let link = crate::network::link::link_by_name(&handle, ifname).await;
    task.abort();
    let link = link.ok()??;
    crate::network::link::link_mac(&link)?.try_into().ok()
}
