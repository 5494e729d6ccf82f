//! Node IPAM: gives every Node a pod CIDR (`spec.podCIDR`), a /24 (by default) out of the
//! cluster CIDR (default 10.244.0.0/16), as kube-controller-manager's node IPAM controller does.
//!
//! Runs on every member but acts only on the raft leader; level-triggered: each pass lists the
//! Nodes, and any Node without a pod CIDR gets the lowest free one. The allocation is a patch
//! through the API with the Node's resourceVersion, so two passes can never hand out the same
//! range.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use ferry_api::client::Api;

use crate::controllers::cache::Cached;

/// A cluster CIDR split into per-node ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrPlan {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl CidrPlan {
    /// `cidr` like `10.244.0.0/16`, `node_prefix` like 24.
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<CidrPlan, String> {
        let (addr, len) = cidr.split_once('/').ok_or_else(|| {
            format!("cluster CIDR {cidr:?}: expected an IPv4 CIDR like 10.244.0.0/16")
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("cluster CIDR {cidr:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("cluster CIDR {cidr:?}: bad prefix length"))?;
        if prefix > 30 || node_prefix < prefix || node_prefix > 30 {
            return Err(format!(
                "node CIDR mask /{node_prefix} must be between the cluster prefix /{prefix} and /30"
            ));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(CidrPlan {
            base: u32::from(addr) & mask,
            prefix,
            node_prefix,
        })
    }

    pub fn capacity(&self) -> u64 {
        1u64 << (self.node_prefix - self.prefix)
    }

    /// The `i`-th node range.
    pub fn range(&self, i: u64) -> String {
        let size = 1u64 << (32 - self.node_prefix);
        let start = u64::from(self.base) + i * size;
        format!("{}/{}", Ipv4Addr::from(start as u32), self.node_prefix)
    }

    /// The lowest range not in `used`.
    pub fn first_free<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let used: std::collections::HashSet<&str> = used.into_iter().collect();
        (0..self.capacity())
            .map(|i| self.range(i))
            .find(|r| !used.contains(r.as_str()))
    }
}

/// One pass: allocate a range to every Node that lacks one. Returns how many were allocated.
pub async fn allocate_once<A: Api + Clone + 'static>(
    api: &Cached<A>,
    plan: &CidrPlan,
) -> Result<usize, String> {
    let nodes = api.snapshot("Node").await.map_err(|e| e.to_string())?;
    let pod_cidr = |n: &Value| {
        n.pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .map(String::from)
    };
    let mut used: Vec<String> = nodes.iter().filter_map(|n| pod_cidr(n)).collect();
    let mut n = 0;
    for node in nodes.iter().filter(|n| pod_cidr(n).is_none()) {
        let node: &Value = node;
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let rv = node
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(range) = plan.first_free(used.iter().map(String::as_str)) else {
            return Err(format!(
                "cluster CIDR exhausted: no range left for node {name}"
            ));
        };
        let patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"podCIDR": range, "podCIDRs": [range]}});
        match api.patch("Node", "", name, &patch).await {
            Ok(_) => {
                tracing::info!(node = name, pod_cidr = %range, "allocated pod CIDR");
                used.push(range);
                n += 1;
            }
            Err(e) => tracing::debug!(node = name, "pod CIDR allocation retried later: {e}"),
        }
    }
    Ok(n)
}

/// Runs allocation passes on the leader whenever the store changes (at most every 200 ms).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
    plan: CidrPlan,
) {
    let pace = crate::controllers::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(200),
    };
    let mut turns = crate::controllers::Turns::new("nodeipam", node, pace);
    while turns.next().await {
        if let Err(e) = allocate_once(&api, &plan).await {
            turns.failed(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_ranges_and_finds_the_lowest_free_one() {
        let p = CidrPlan::parse("10.244.0.0/16", 24).expect("plan");
        assert_eq!(p.capacity(), 256);
        assert_eq!(p.range(0), "10.244.0.0/24");
        assert_eq!(p.range(255), "10.244.255.0/24");
        assert_eq!(
            p.first_free(["10.244.0.0/24", "10.244.2.0/24"]).as_deref(),
            Some("10.244.1.0/24")
        );
        let tiny = CidrPlan::parse("10.0.0.0/30", 30).expect("plan");
        assert_eq!(tiny.first_free(["10.0.0.0/30"]), None);
        assert!(CidrPlan::parse("10.244.0.0/16", 8).is_err());
        assert!(CidrPlan::parse("bogus", 24).is_err());
        assert_eq!(
            CidrPlan::parse("10.244.7.9/16", 24).expect("plan").range(1),
            "10.244.1.0/24"
        );
    }
}
