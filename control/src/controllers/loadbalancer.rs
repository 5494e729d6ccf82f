//! LoadBalancer addresses: every Service of type LoadBalancer gets an IP from the configured pool
//! (`--loadbalancer-ip-pool`, like MetalLB's address pools) in `status.loadBalancer.ingress`;
//! `spec.loadBalancerIP` requests a specific one. The datapath announces nothing by itself: nodes
//! answer for these IPs in eBPF (the datapath issue). Without a pool, Services stay `<pending>`,
//! as on a Kubernetes cluster without a load-balancer implementation.
//!
//! Level-triggered on the leader through [`Api`]; allocations are recovered from the Services'
//! own status, so there is no separate state to lose.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ferry_api::client::{Api, ListOptions};
use serde_json::{Value, json};

/// An IPv4 range `a.b.c.d/n` handed out host by host.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    first: u32,
    last: u32,
}

impl Pool {
    pub fn parse(cidr: &str) -> Result<Pool, String> {
        let (a, l) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?}: expected a.b.c.d/n"))?;
        let a: Ipv4Addr = a.parse().map_err(|_| format!("{cidr:?}: bad address"))?;
        let l: u32 = l.parse().map_err(|_| format!("{cidr:?}: bad prefix"))?;
        if !(8..=32).contains(&l) {
            return Err(format!("{cidr:?}: prefix must be between /8 and /32"));
        }
        let size = 1u64 << (32 - l);
        let base = u32::from(a) & !((size - 1) as u32);
        // A /31 or /32 pool hands out every address; larger pools skip network and broadcast.
        let (first, last) = if size <= 2 {
            (base, base + (size as u32 - 1))
        } else {
            (base + 1, base + size as u32 - 2)
        };
        Ok(Pool { first, last })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// The lowest address not in `used`.
    pub fn first_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
    }
}

fn ingress_ip(svc: &Value) -> Option<Ipv4Addr> {
    svc.pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// What a LoadBalancer Service should be given (None: leave it as it is).
pub fn decide(
    svc: &Value,
    pool: &Pool,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Result<Ipv4Addr, String>> {
    if svc.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
        || ingress_ip(svc).is_some()
    {
        return None;
    }
    match svc
        .pointer("/spec/loadBalancerIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(want) => Some(match want.parse::<Ipv4Addr>() {
            Ok(ip) if !pool.contains(ip) => {
                Err(format!("requested loadBalancerIP {ip} is not in the pool"))
            }
            Ok(ip) if used.contains(&ip) => {
                Err(format!("requested loadBalancerIP {ip} is already in use"))
            }
            Ok(ip) => Ok(ip),
            Err(_) => Err(format!(
                "requested loadBalancerIP {want:?} is not an IPv4 address"
            )),
        }),
        None => Some(
            pool.first_free(used)
                .ok_or_else(|| "the LoadBalancer address pool is exhausted".to_string()),
        ),
    }
}

/// One pass over every Service.
pub async fn reconcile_all<A: Api>(
    api: &A,
    pool: &Pool,
) -> Result<usize, ferry_api::client::ClientError> {
    let services = api.list("Service", &ListOptions::default()).await?;
    let items = services["items"].as_array().cloned().unwrap_or_default();
    let mut used: BTreeSet<Ipv4Addr> = items
        .iter()
        .filter(|s| s.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer"))
        .filter_map(ingress_ip)
        .collect();
    let mut changed = 0;
    for svc in &items {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match decide(svc, pool, &used) {
            None => {}
            Some(Ok(ip)) => {
                let mut updated = svc.clone();
                updated["status"] =
                    json!({"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}});
                match api.update_status("Service", &updated).await {
                    Ok(_) => {
                        used.insert(ip);
                        changed += 1;
                        tracing::info!(service = name, %ip, "assigned LoadBalancer IP");
                    }
                    Err(e) => tracing::debug!(service = name, "assigning LoadBalancer IP: {e}"),
                }
            }
            Some(Err(why)) => tracing::warn!(service = name, "no LoadBalancer IP: {why}"),
        }
    }
    Ok(changed)
}

/// Runs passes on the leader whenever the store changes (at most every 100 ms).
pub async fn run<A: Api>(api: A, node: std::sync::Arc<crate::node::Node>, pool: Pool) {
    let pace = super::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(100),
    };
    let mut turns = super::Turns::new("loadbalancer", node, pace);
    while turns.next().await {
        if let Err(e) = reconcile_all(&api, &pool).await {
            turns.failed(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_decisions() {
        let pool = Pool::parse("192.0.2.0/29").expect("pool");
        let lb = |extra: Value| {
            let mut s = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"}});
            if let (Some(spec), Some(extra)) = (s["spec"].as_object_mut(), extra.as_object()) {
                spec.extend(extra.clone());
            }
            s
        };
        let mut used = BTreeSet::new();
        assert_eq!(
            decide(&lb(json!({})), &pool, &used),
            Some(Ok("192.0.2.1".parse().expect("ip")))
        );
        used.insert("192.0.2.1".parse().expect("ip"));
        assert_eq!(
            decide(&lb(json!({})), &pool, &used),
            Some(Ok("192.0.2.2".parse().expect("ip")))
        );
        assert_eq!(
            decide(&lb(json!({"loadBalancerIP": "192.0.2.5"})), &pool, &used),
            Some(Ok("192.0.2.5".parse().expect("ip")))
        );
        assert!(
            matches!(decide(&lb(json!({"loadBalancerIP": "192.0.2.1"})), &pool, &used), Some(Err(e)) if e.contains("in use"))
        );
        assert!(
            matches!(decide(&lb(json!({"loadBalancerIP": "10.0.0.1"})), &pool, &used), Some(Err(e)) if e.contains("not in the pool"))
        );
        let cluster_ip = json!({"spec": {"type": "ClusterIP"}});
        assert_eq!(decide(&cluster_ip, &pool, &used), None);
        let done = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.3"}]}}});
        assert_eq!(decide(&done, &pool, &used), None);
        let full: BTreeSet<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        assert!(
            matches!(decide(&lb(json!({})), &pool, &full), Some(Err(e)) if e.contains("exhausted"))
        );
        assert!(
            Pool::parse("192.0.2.7/32")
                .expect("one")
                .contains("192.0.2.7".parse().expect("ip"))
        );
        assert!(Pool::parse("nope").is_err());
    }
}
