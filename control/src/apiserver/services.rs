//! Service address allocation, in the API server as in Kubernetes: a ClusterIP from the service
//! CIDR (default 10.96.0.0/12) and NodePorts from 30000-32767, unique cluster-wide; a
//! LoadBalancer with externalTrafficPolicy Local also gets its `healthCheckNodePort` from the
//! NodePort range (every agent answers health checks on it, see agent/src/datapath/health.rs).
//!
//! Each allocated address is claimed with a compare-and-swap create of an internal key
//! (`/_ferry/alloc/...`, never visible through the API) before the Service is written, so two
//! concurrent creates can never get the same address; claims are released when the Service is
//! deleted or its create fails. ClusterIPs and NodePorts are immutable once set.

use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{Value, json};

use super::{ApiError, ApiServer};
use crate::store::{Command, CommandResult, Precondition};

pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// The service CIDR.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRange {
    base: u32,
    size: u32,
}

impl ServiceRange {
    pub fn parse(cidr: &str) -> Result<ServiceRange, String> {
        let (a, l) = cidr
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {cidr:?}: expected a.b.c.d/n"))?;
        let a: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("service CIDR {cidr:?}: bad address"))?;
        let l: u32 = l
            .parse()
            .map_err(|_| format!("service CIDR {cidr:?}: bad prefix"))?;
        if !(8..=28).contains(&l) {
            return Err(format!(
                "service CIDR {cidr:?}: prefix must be between /8 and /28"
            ));
        }
        let size = 1u32 << (32 - l);
        Ok(ServiceRange {
            base: u32::from(a) & !(size - 1),
            size,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size - 1
    }

    /// The first host address, reserved (Kubernetes gives it to the `kubernetes` service).
    fn reserved(&self) -> u32 {
        self.base + 1
    }

    fn describe(&self) -> String {
        let bits = 32 - self.size.trailing_zeros();
        format!("{}/{bits}", Ipv4Addr::from(self.base))
    }
}

fn ip_key(ip: &str) -> String {
    format!("/_ferry/alloc/clusterip/{ip}")
}

fn port_key(port: i64) -> String {
    format!("/_ferry/alloc/nodeport/{port}")
}

fn invalid(name: &str, errors: String) -> ApiError {
    ApiError::Invalid {
        kind: "Service".into(),
        name: name.into(),
        errors,
    }
}

impl ApiServer {
    async fn claim(&self, key: String, owner: &str) -> Result<bool, ApiError> {
        let cmd = Command::Put {
            key,
            value: owner.to_string(),
            precondition: Precondition::Absent,
        };
        Ok(matches!(
            self.write(cmd).await?,
            CommandResult::Applied { .. }
        ))
    }

    /// Releases claims (best effort: a leaked claim only withholds one address).
    pub(crate) async fn release_claims(&self, keys: &[String]) {
        for key in keys {
            let cmd = Command::Delete {
                key: key.clone(),
                precondition: Precondition::Exists,
            };
            if let Err(e) = self.write(cmd).await {
                tracing::warn!("releasing {key}: {e}");
            }
        }
    }

    /// Claims a ClusterIP and NodePorts for a new Service (filling them in when unset) and
    /// returns the claim keys. On error nothing stays claimed.
    pub(crate) async fn allocate_service(&self, svc: &mut Value) -> Result<Vec<String>, ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let owner = format!(
            "{}/{}",
            svc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            name
        );
        let mut claimed = Vec::new();
        let result = self.allocate_into(svc, &name, &owner, &mut claimed).await;
        if result.is_err() {
            self.release_claims(&claimed).await;
        }
        result.map(|()| claimed)
    }

    async fn allocate_into(
        &self,
        svc: &mut Value,
        name: &str,
        owner: &str,
        claimed: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return Ok(());
        }
        let range = self.service_range;
        match svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
        {
            "None" => {}
            "" => {
                let span = range.size - 3; // network, reserved first host, broadcast
                let start = rand::rng().random_range(0..span);
                let mut got = None;
                for i in 0..span.min(4096) {
                    let ip = Ipv4Addr::from(range.reserved() + 1 + (start + i) % span).to_string();
                    if self.claim(ip_key(&ip), owner).await? {
                        got = Some(ip);
                        break;
                    }
                }
                let ip = got.ok_or_else(|| {
                    ApiError::Internal(format!(
                        "no ClusterIP left in {}: the service range is full",
                        range.describe()
                    ))
                })?;
                claimed.push(ip_key(&ip));
                svc["spec"]["clusterIP"] = json!(ip);
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
            given => {
                let ip: Ipv4Addr = given.parse().map_err(|_| {
                    invalid(
                        name,
                        format!(
                            "spec.clusterIP: Invalid value: {given:?}: must be a valid IPv4 address"
                        ),
                    )
                })?;
                if !range.contains(ip) {
                    return Err(invalid(
                        name,
                        format!(
                            "spec.clusterIP: Invalid value: {given:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                            range.describe()
                        ),
                    ));
                }
                if !self.claim(ip_key(given), owner).await? {
                    return Err(invalid(
                        name,
                        format!(
                            "spec.clusterIP: Invalid value: {given:?}: provided IP is already allocated"
                        ),
                    ));
                }
                claimed.push(ip_key(given));
                svc["spec"]["clusterIPs"] = json!([given]);
            }
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            let count = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                let given = svc["spec"]["ports"][i]["nodePort"].as_i64().unwrap_or(0);
                let port = self.node_port(given, owner).await?.map_err(|why| {
                    invalid(
                        name,
                        format!("spec.ports[{i}].nodePort: Invalid value: {given}: {why}"),
                    )
                })?;
                claimed.push(port_key(port));
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }
        if needs_health_check_port(svc) {
            let given = svc["spec"]["healthCheckNodePort"].as_i64().unwrap_or(0);
            let field = "spec.healthCheckNodePort";
            let port = self
                .node_port(given, owner)
                .await?
                .map_err(|why| invalid(name, format!("{field}: Invalid value: {given}: {why}")))?;
            claimed.push(port_key(port));
            svc["spec"]["healthCheckNodePort"] = json!(port);
        }
        Ok(())
    }

    /// Claims NodePort `given`, or a free one when `given` is 0. `Ok(Err(why))`: the given port
    /// is not available.
    async fn node_port(&self, given: i64, owner: &str) -> Result<Result<i64, String>, ApiError> {
        let (lo, hi) = (i64::from(NODE_PORT_RANGE.0), i64::from(NODE_PORT_RANGE.1));
        if given != 0 {
            if !(lo..=hi).contains(&given) {
                return Ok(Err(format!(
                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                )));
            }
            return Ok(if self.claim(port_key(given), owner).await? {
                Ok(given)
            } else {
                Err("provided port is already allocated".into())
            });
        }
        let span = hi - lo + 1;
        let start = rand::rng().random_range(0..span);
        for k in 0..span {
            let p = lo + (start + k) % span;
            if self.claim(port_key(p), owner).await? {
                return Ok(Ok(p));
            }
        }
        Err(ApiError::Internal(format!("no NodePort left in {lo}-{hi}")))
    }

    /// Keeps a Service's allocated addresses across updates: unset fields take the old values;
    /// changing them is refused, as in Kubernetes.
    pub(crate) fn keep_service_allocations(old: &Value, new: &mut Value) -> Result<(), ApiError> {
        let name = old
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let old_ip = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match new
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
        {
            "" if !old_ip.is_empty() => {
                new["spec"]["clusterIP"] = json!(old_ip);
                new["spec"]["clusterIPs"] = old
                    .pointer("/spec/clusterIPs")
                    .cloned()
                    .unwrap_or(json!([old_ip]));
            }
            "" => {}
            ip if ip != old_ip => {
                return Err(invalid(
                    &name,
                    format!("spec.clusterIP: Invalid value: {ip:?}: field is immutable"),
                ));
            }
            _ => {}
        }
        let old_hc = old
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        match new
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
        {
            0 if old_hc != 0 && needs_health_check_port(new) => {
                new["spec"]["healthCheckNodePort"] = json!(old_hc);
            }
            0 => {}
            p if p != old_hc => {
                return Err(invalid(
                    &name,
                    format!(
                        "spec.healthCheckNodePort: Invalid value: {p}: field is immutable (it is allocated when a LoadBalancer Service with externalTrafficPolicy Local is created)"
                    ),
                ));
            }
            _ => {}
        }
        let old_ports: Vec<Value> = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut() {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    continue;
                }
                let same = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]);
                if let Some(np) = same
                    .and_then(|o| o.get("nodePort"))
                    .filter(|n| n.as_i64().unwrap_or(0) != 0)
                {
                    p["nodePort"] = np.clone();
                }
            }
        }
        Ok(())
    }

    /// The claim keys a stored Service holds.
    pub(crate) fn service_claims(svc: &Value) -> Vec<String> {
        let mut keys = Self::port_and_ip_claims(svc);
        if let Some(p) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .filter(|p| *p != 0)
        {
            keys.push(port_key(p));
        }
        keys
    }

    fn port_and_ip_claims(svc: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            keys.push(ip_key(ip));
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0)
            {
                keys.push(port_key(np));
            }
        }
        keys
    }
}

/// A LoadBalancer with externalTrafficPolicy Local: load balancers check its nodes' health on
/// `spec.healthCheckNodePort`.
fn needs_health_check_port(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = ServiceRange::parse(DEFAULT_SERVICE_CIDR).expect("range");
        assert!(r.contains("10.96.0.10".parse().expect("ip")));
        assert!(r.contains("10.111.255.254".parse().expect("ip")));
        assert!(!r.contains("10.112.0.1".parse().expect("ip")));
        assert!(!r.contains("10.96.0.0".parse().expect("ip")));
        assert_eq!(r.describe(), "10.96.0.0/12");
        assert!(ServiceRange::parse("10.0.0.0/30").is_err());
    }

    #[test]
    fn updates_keep_allocations_and_refuse_changes() {
        let old = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        ApiServer::keep_service_allocations(&old, &mut new).expect("kept");
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        let mut changed = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.6"}});
        assert!(ApiServer::keep_service_allocations(&old, &mut changed).is_err());
        assert_eq!(
            ApiServer::service_claims(&old),
            vec![
                "/_ferry/alloc/clusterip/10.96.0.5",
                "/_ferry/alloc/nodeport/30080"
            ]
        );
    }

    #[test]
    fn health_check_port_is_kept_while_the_policy_is_local() {
        let old = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        assert!(needs_health_check_port(&old));
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "ports": [{"port": 80, "protocol": "TCP"}]}});
        ApiServer::keep_service_allocations(&old, &mut new).expect("kept");
        assert_eq!(new["spec"]["healthCheckNodePort"], 31000);
        let mut cluster = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "protocol": "TCP"}]}});
        ApiServer::keep_service_allocations(&old, &mut cluster).expect("kept");
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        let mut moved = new.clone();
        moved["spec"]["healthCheckNodePort"] = json!(31001);
        let err = ApiServer::keep_service_allocations(&old, &mut moved).expect_err("immutable");
        assert!(
            err.to_string().contains("spec.healthCheckNodePort"),
            "{err}"
        );
        assert!(
            ApiServer::service_claims(&old).contains(&"/_ferry/alloc/nodeport/31000".to_string())
        );
    }
}
