//! What the service maps should hold, computed purely from Services and EndpointSlices as the
//! API serves them: one [`Entry`] per frontend (ClusterIP, NodePort, LoadBalancer ingress IP,
//! external IP, each per port and protocol) with its backends.
//!
//! Backend choice follows KEP-1669: ready endpoints serve; when none is ready, serving endpoints
//! that are terminating take new connections; endpoints that are not serving never do.
//!
//! Traffic policies, as kube-proxy applies them: `internalTrafficPolicy: Local` gives a
//! ClusterIP this node's endpoints only; `externalTrafficPolicy: Local` adds an
//! [`svc_scope::EXTERNAL`] entry with this node's endpoints for NodePorts, LoadBalancer
//! addresses and external IPs, used by traffic from outside the node (which then keeps its
//! source address: it is never sent to another node). Connections made on the node itself keep
//! the cluster-wide entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ferry_ebpf_common::{ipproto, svc_scope};
use serde_json::Value;

/// A service address as clients use it. `addr` 0.0.0.0 is a NodePort (any of the node's
/// addresses, or loopback). `scope` says which clients the entry serves ([`svc_scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

impl Frontend {
    /// The entry connections made on the node use (and outside traffic, unless
    /// externalTrafficPolicy is Local).
    pub fn internal(addr: Ipv4Addr, port: u16, proto: u8) -> Frontend {
        Frontend {
            addr,
            port,
            proto,
            scope: svc_scope::INTERNAL,
        }
    }

    /// The entry of traffic from outside the node (externalTrafficPolicy: Local).
    pub fn is_external(&self) -> bool {
        self.scope == svc_scope::EXTERNAL
    }
}

/// A pod address and port behind a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

/// What one frontend load-balances to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// `namespace/name:port-name` (for `ferry datapath services`).
    pub service: String,
    pub ready: Vec<BackendAddr>,
    /// Serving but terminating: used only while `ready` is empty.
    pub terminating: Vec<BackendAddr>,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_s: Option<u32>,
    /// Traffic from outside picks the backend with a Maglev table ([`super::maglev`]): set on
    /// the entries TC uses for NodePorts, LoadBalancer and external IPs.
    pub maglev: bool,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn proto_of(p: &str) -> Option<u8> {
    match p {
        "" | "TCP" => Some(ipproto::TCP),
        "UDP" => Some(ipproto::UDP),
        _ => None,
    }
}

fn ipv4(v: &str) -> Option<Ipv4Addr> {
    v.parse().ok()
}

/// The desired frontends of all `services` on node `node`, with backends from `slices`
/// (EndpointSlices labelled `kubernetes.io/service-name`).
pub fn desired(services: &[Value], slices: &[Value], node: &str) -> BTreeMap<Frontend, Entry> {
    // (namespace, service) -> slices
    let mut by_service: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
    for sl in slices {
        if !matches!(s(sl, "/addressType"), "" | "IPv4") {
            continue;
        }
        let svc = sl
            .pointer("/metadata/labels/kubernetes.io~1service-name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if svc.is_empty() {
            continue;
        }
        by_service
            .entry((s(sl, "/metadata/namespace"), svc))
            .or_default()
            .push(sl);
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let ns = s(svc, "/metadata/namespace");
        let name = s(svc, "/metadata/name");
        let kind = s(svc, "/spec/type");
        if kind == "ExternalName" {
            continue;
        }
        let mut cluster_ips: Vec<Ipv4Addr> = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(ipv4))
            .collect();
        if cluster_ips.is_empty()
            && let Some(ip) = ipv4(s(svc, "/spec/clusterIP"))
        {
            cluster_ips.push(ip);
        }
        let lb_ips: Vec<Ipv4Addr> = svc
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().and_then(ipv4))
            .collect();
        let external_ips: Vec<Ipv4Addr> = svc
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().and_then(ipv4))
            .collect();
        let affinity_s = (s(svc, "/spec/sessionAffinity") == "ClientIP").then(|| {
            svc.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .map_or(10_800, |t| t.min(86_400) as u32)
        });
        let slices = by_service.get(&(ns, name)).cloned().unwrap_or_default();
        let itp_local = s(svc, "/spec/internalTrafficPolicy") == "Local";
        let etp_local = s(svc, "/spec/externalTrafficPolicy") == "Local"
            && matches!(kind, "NodePort" | "LoadBalancer");
        for port in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(proto) = proto_of(port["protocol"].as_str().unwrap_or("")) else {
                continue;
            };
            let Some(svc_port) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let port_name = port["name"].as_str().unwrap_or("");
            let entry = |only_node: Option<&str>| {
                let (ready, terminating) = backends(&slices, port_name, proto, only_node);
                Entry {
                    service: if port_name.is_empty() {
                        format!("{ns}/{name}")
                    } else {
                        format!("{ns}/{name}:{port_name}")
                    },
                    ready,
                    terminating,
                    affinity_s,
                    maglev: false,
                }
            };
            let cluster = entry(None);
            let local = (itp_local || etp_local).then(|| entry(Some(node)));
            let local = local.as_ref().unwrap_or(&cluster);
            for ip in &cluster_ips {
                let e = if itp_local { local } else { &cluster };
                out.insert(Frontend::internal(*ip, svc_port, proto), e.clone());
            }
            // North-south frontends: TC uses the external entry when there is one (Local),
            // else the internal one; that entry gets a Maglev table.
            let mut external = |addr: Ipv4Addr, port: u16| {
                let internal = Entry {
                    maglev: !etp_local,
                    ..cluster.clone()
                };
                out.insert(Frontend::internal(addr, port, proto), internal);
                if etp_local {
                    let f = Frontend {
                        addr,
                        port,
                        proto,
                        scope: svc_scope::EXTERNAL,
                    };
                    let e = Entry {
                        maglev: true,
                        ..local.clone()
                    };
                    out.insert(f, e);
                }
            };
            for ip in lb_ips.iter().chain(&external_ips) {
                external(*ip, svc_port);
            }
            if matches!(kind, "NodePort" | "LoadBalancer")
                && let Some(np) = port["nodePort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                && np > 0
            {
                external(Ipv4Addr::UNSPECIFIED, np);
            }
        }
    }
    out
}

/// The ready and serving-terminating backends of one service port; with `only_node`, those on
/// that node only (the endpoint's `nodeName`).
fn backends(
    slices: &[&Value],
    port_name: &str,
    proto: u8,
    only_node: Option<&str>,
) -> (Vec<BackendAddr>, Vec<BackendAddr>) {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for sl in slices {
        let Some(port) = sl
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| {
                p["name"].as_str().unwrap_or("") == port_name
                    && proto_of(p["protocol"].as_str().unwrap_or("")) == Some(proto)
            })
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in sl
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if only_node.is_some_and(|n| ep["nodeName"].as_str() != Some(n)) {
                continue;
            }
            let c = &ep["conditions"];
            // Kubernetes: an unset `ready` means ready; `serving` defaults to `ready`.
            let is_ready = c["ready"].as_bool().unwrap_or(true);
            let serving = c["serving"].as_bool().unwrap_or(is_ready);
            let is_terminating = c["terminating"].as_bool().unwrap_or(false);
            for a in ep
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().and_then(ipv4))
            {
                let b = BackendAddr {
                    addr: a,
                    port,
                    proto,
                };
                if is_ready && !is_terminating {
                    ready.insert(b);
                } else if serving && is_terminating {
                    terminating.insert(b);
                }
            }
        }
    }
    (
        ready.into_iter().collect(),
        terminating.into_iter().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: Value) -> Value {
        let mut s = json!({"metadata": {"namespace": "default", "name": "web"}});
        s.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        s
    }

    fn slice(eps: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web-ferry",
                "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": eps})
    }

    #[test]
    fn frontends_and_backends() {
        let services = [svc(json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["192.0.2.7"],
                     "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.77.240"}]}},
        }))];
        let slices = [slice(json!([
            {"addresses": ["10.244.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false}},
            {"addresses": ["10.244.1.2"], "conditions": {}},
            {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.4"], "conditions": {"ready": false, "serving": false, "terminating": false}},
        ]))];
        let d = desired(&services, &slices, "n1");
        let fronts: Vec<String> = d
            .keys()
            .map(|f| format!("{}:{}/{}", f.addr, f.port, f.proto))
            .collect();
        assert_eq!(
            fronts,
            [
                "0.0.0.0:30080/6",
                "10.96.0.10:80/6",
                "192.0.2.7:80/6",
                "192.168.77.240:80/6"
            ]
        );
        let e = &d[&Frontend::internal("10.96.0.10".parse().unwrap(), 80, 6)];
        let ips = |v: &[BackendAddr]| v.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>();
        assert_eq!(ips(&e.ready), ["10.244.0.2", "10.244.1.2"]);
        assert_eq!(ips(&e.terminating), ["10.244.1.3"]);
        assert_eq!(e.ready[0].port, 8080);
        assert_eq!(e.affinity_s, Some(10_800));
        assert_eq!(e.service, "default/web:http");
        // Maglev tables for what traffic from outside reaches, not for the ClusterIP.
        assert!(!e.maglev);
        let cluster_ip: Ipv4Addr = "10.96.0.10".parse().unwrap();
        for (f, e) in &d {
            assert_eq!(e.maglev, f.addr != cluster_ip, "{f:?}");
        }
    }

    #[test]
    fn skips_what_has_no_frontend() {
        let services = [
            svc(json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            svc(json!({"spec": {"type": "ExternalName", "externalName": "x.example"}})),
            svc(
                json!({"spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 53, "protocol": "SCTP"}]}}),
            ),
        ];
        assert!(desired(&services, &[], "n1").is_empty());
        // A ClusterIP without endpoints is still a frontend (connections are refused).
        let s = [svc(
            json!({"spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 53, "protocol": "UDP"}]}}),
        )];
        let d = desired(&s, &[], "n1");
        assert_eq!(d.len(), 1);
        assert!(d.values().next().unwrap().ready.is_empty());
    }

    #[test]
    fn traffic_policies_local_use_this_nodes_endpoints() {
        let eps = json!([
            {"addresses": ["10.244.0.2"], "nodeName": "n0", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.3"], "nodeName": "n1",
             "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]);
        let services = [svc(json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.77.240"}]}},
        }))];
        let d = desired(&services, &[slice(eps.clone())], "n1");
        let ips = |f: Frontend| {
            let e = &d[&f];
            (
                e.ready
                    .iter()
                    .map(|b| b.addr.to_string())
                    .collect::<Vec<_>>(),
                e.terminating.len(),
            )
        };
        let ext = |addr: &str, port| Frontend {
            scope: svc_scope::EXTERNAL,
            ..Frontend::internal(addr.parse().unwrap(), port, 6)
        };
        let int = |addr: &str, port| Frontend::internal(addr.parse().unwrap(), port, 6);
        // internalTrafficPolicy: Local: the ClusterIP has this node's endpoints only.
        assert_eq!(ips(int("10.96.0.10", 80)), (vec!["10.244.1.2".into()], 1));
        // externalTrafficPolicy: Local: outside traffic gets this node's endpoints, traffic
        // from the node itself all of them.
        for (addr, port) in [("0.0.0.0", 30080), ("192.168.77.240", 80)] {
            assert_eq!(ips(ext(addr, port)), (vec!["10.244.1.2".into()], 1));
            assert_eq!(
                ips(int(addr, port)),
                (vec!["10.244.0.2".into(), "10.244.1.2".into()], 1)
            );
        }
        assert_eq!(d.len(), 5);
        // With the Local policy TC uses the external entries: they get the Maglev tables.
        assert!(d.iter().all(|(f, e)| e.maglev == f.is_external()));
        // A node without endpoints still gets the external entry, empty: outside traffic is
        // dropped there.
        let d = desired(&services, &[slice(eps.clone())], "n2");
        assert!(d[&ext("0.0.0.0", 30080)].ready.is_empty());
        assert_eq!(d[&int("0.0.0.0", 30080)].ready.len(), 2);
        // Cluster policies (the default): one entry per frontend, every endpoint.
        let cluster = [svc(json!({
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.11",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}}))];
        let d = desired(&cluster, &[slice(eps)], "n1");
        assert_eq!(d.len(), 2);
        assert!(d.keys().all(|f| f.scope == svc_scope::INTERNAL));
        assert!(d.values().all(|e| e.ready.len() == 2));
    }
}
