//! The cluster zone: every name the agent's DNS server answers for itself, computed from
//! Services and EndpointSlices, and the answer to one question. Pure (no I/O), so the whole
//! naming scheme is unit-tested here.
//!
//! Names follow the Kubernetes DNS specification (as CoreDNS's `kubernetes` plugin serves it),
//! below the cluster domain `<zone>` (`cluster.local`):
//!
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the ClusterIP(s); for a headless Service (`clusterIP:
//!   None`) the addresses of its ready endpoints (all endpoints with
//!   `publishNotReadyAddresses`); for an ExternalName Service a CNAME to `spec.externalName`.
//! - `<ep>.<svc>.<ns>.svc.<zone>` for every endpoint of a headless Service: `<ep>` is the
//!   endpoint's `hostname` (StatefulSet pods) or, without one, its address with dashes
//!   (`10-244-1-5`), as CoreDNS names them.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for every named port: the Service's port and
//!   name for a ClusterIP Service; per ready endpoint its target port and `<ep>` name for a
//!   headless one. Targets' addresses go into the additional section.
//! - `<a-b-c-d>.<ns>.pod.<zone>` A: the address written in the name (kube-dns' and CoreDNS'
//!   `pods insecure` behaviour).
//! - PTR for ClusterIPs and headless endpoints (`in-addr.arpa`/`ip6.arpa`); other reverse
//!   names are not ours and go upstream.
//! - Names that exist with no data of the asked type (AAAA of an IPv4-only Service,
//!   `<ns>.svc.<zone>`, `_tcp.<svc>...`) get NOERROR with no answers; names below the zone that
//!   do not exist NXDOMAIN. Both carry the zone's SOA (negative TTL 5 s).
//!
//! Every record has a TTL of 5 s, CoreDNS's default for the kubernetes plugin.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::{
    op::ResponseCode,
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, PTR, SOA, SRV},
    },
};
use serde_json::Value;

/// TTL of every answer, positive or negative.
pub const TTL: u32 = 5;
/// How many CNAMEs inside the zone are followed for one question.
const MAX_CNAME_CHAIN: usize = 8;
/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    a: BTreeSet<Ipv4Addr>,
    aaaa: BTreeSet<Ipv6Addr>,
    /// ExternalName target (absolute).
    cname: Option<Name>,
    srv: Vec<Srv>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Srv {
    port: u16,
    /// Target, relative to the zone (a key of `Zone::nodes`).
    target: String,
    weight: u16,
}

/// What to do with a question.
#[derive(Debug)]
pub enum Lookup {
    /// Answered from the zone.
    Local(Answer),
    /// Not the cluster's: ask the upstream resolvers.
    Forward,
}

/// A local answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The answers end in a CNAME to this name outside the zone (an ExternalName Service):
    /// resolve it upstream and append what comes back.
    pub chase: Option<Name>,
}

/// A snapshot of the cluster zone.
#[derive(Debug)]
pub struct Zone {
    /// The cluster domain, lowercase labels (`["cluster", "local"]`).
    labels: Vec<String>,
    origin: Name,
    /// False until Services and EndpointSlices have been listed once: then names in the zone
    /// get SERVFAIL, never a (cached) NXDOMAIN from a half view.
    synced: bool,
    /// Every name of the zone, relative and lowercase (`web.default.svc`; `""` is the apex),
    /// including empty non-terminals (`default.svc`).
    nodes: HashMap<String, Node>,
    /// Reverse records: address → name relative to the zone.
    ptr: HashMap<IpAddr, String>,
    serial: u32,
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// A label we can put into a name: non-empty, at most 63 bytes, no dots or odd characters
/// (the API validates these names; this keeps a bad object from producing a wrong name).
fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `10.244.1.5` → `10-244-1-5`; `fd00::5` → `fd00--5`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// `10-244-1-5` → 10.244.1.5.
fn undashed_v4(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

impl Zone {
    /// The zone before the first list: every name in it gets SERVFAIL.
    pub fn unsynced(domain: &str) -> Zone {
        let mut z = Zone::build(domain, [], []);
        z.synced = false;
        z
    }

    /// The zone for `domain` (`cluster.local`) from every Service and EndpointSlice.
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Value>,
        slices: impl IntoIterator<Item = &'a Value>,
    ) -> Zone {
        let labels: Vec<String> = domain
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let origin = Name::from_ascii(format!("{}.", labels.join(".")))
            .map(|n| n.to_lowercase())
            .unwrap_or_else(|_| Name::root());
        let mut z = Zone {
            labels,
            origin,
            synced: true,
            nodes: HashMap::new(),
            ptr: HashMap::new(),
            serial: chrono::Utc::now().timestamp() as u32,
        };
        z.node("svc");
        z.node("pod");
        // EndpointSlices by Service.
        let mut by_service: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
        for sl in slices {
            let svc = s(
                sl,
                &format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")),
            );
            if !svc.is_empty() {
                by_service
                    .entry((s(sl, "/metadata/namespace"), svc))
                    .or_default()
                    .push(sl);
            }
        }
        for svc in services {
            let (ns, name) = (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"));
            if !label_ok(ns) || !label_ok(name) {
                continue;
            }
            let base = format!("{name}.{ns}.svc");
            z.node(&base);
            if s(svc, "/spec/type") == "ExternalName" {
                let target = s(svc, "/spec/externalName").trim_end_matches('.');
                if let Ok(t) = Name::from_ascii(format!("{target}."))
                    && !target.is_empty()
                {
                    z.node(&base).cname = Some(t);
                }
                continue;
            }
            let slices = by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if s(svc, "/spec/clusterIP") == "None" {
                let all = svc
                    .pointer("/spec/publishNotReadyAddresses")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                z.add_headless(&base, slices, all);
            } else {
                z.add_cluster_ip(&base, svc);
            }
        }
        z
    }

    /// The node for `key`, created with its ancestors (empty non-terminals) if missing.
    fn node(&mut self, key: &str) -> &mut Node {
        if !self.nodes.contains_key(key) {
            let mut k = key;
            while let Some((_, parent)) = k.split_once('.') {
                self.nodes.entry(parent.to_owned()).or_default();
                k = parent;
            }
            self.nodes.entry(String::new()).or_default();
        }
        self.nodes.entry(key.to_owned()).or_default()
    }

    fn add_ip(&mut self, key: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.node(key).a.insert(v4),
            IpAddr::V6(v6) => self.node(key).aaaa.insert(v6),
        };
    }

    fn add_cluster_ip(&mut self, base: &str, svc: &Value) {
        let mut ips: Vec<IpAddr> = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        if let Ok(ip) = s(svc, "/spec/clusterIP").parse::<IpAddr>()
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        for ip in ips {
            self.add_ip(base, ip);
            self.ptr.entry(ip).or_insert_with(|| base.to_owned());
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pname = s(p, "/name");
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
            let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            if !label_ok(pname) || !label_ok(&proto) {
                continue;
            }
            let key = format!("_{pname}._{proto}.{base}");
            let srv = Srv {
                port,
                target: base.to_owned(),
                weight: 100,
            };
            let node = self.node(&key);
            if !node.srv.contains(&srv) {
                node.srv.push(srv);
            }
        }
    }

    fn add_headless(&mut self, base: &str, slices: &[&Value], all: bool) {
        let mut srv_keys = BTreeSet::new();
        for sl in slices {
            if !matches!(s(sl, "/addressType"), "IPv4" | "IPv6") {
                continue;
            }
            let ports: Vec<(String, String, u16)> = sl["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let name = s(p, "/name");
                    let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                    let port = u16::try_from(p["port"].as_u64()?).ok()?;
                    (label_ok(name) && label_ok(&proto)).then(|| (name.to_owned(), proto, port))
                })
                .collect();
            for ep in sl["endpoints"].as_array().into_iter().flatten() {
                // A missing `ready` means ready (the API's rule for unknown state).
                let ready = ep.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false);
                if !ready && !all {
                    continue;
                }
                let addrs: Vec<IpAddr> = ep["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str()?.parse().ok())
                    .collect();
                let Some(first) = addrs.first() else { continue };
                let hostname = s(ep, "/hostname").to_ascii_lowercase();
                let ep_name = if label_ok(&hostname) {
                    hostname
                } else {
                    dashed(*first)
                };
                let ep_key = format!("{ep_name}.{base}");
                for ip in &addrs {
                    self.add_ip(base, *ip);
                    self.add_ip(&ep_key, *ip);
                    self.ptr.entry(*ip).or_insert_with(|| ep_key.clone());
                }
                for (pname, proto, port) in &ports {
                    let key = format!("_{pname}._{proto}.{base}");
                    let srv = Srv {
                        port: *port,
                        target: ep_key.clone(),
                        weight: 0,
                    };
                    let node = self.node(&key);
                    if !node.srv.contains(&srv) {
                        node.srv.push(srv);
                    }
                    srv_keys.insert(key);
                }
            }
        }
        // Equal weights summing to about 100, as CoreDNS gives them.
        for key in srv_keys {
            let node = self.node(&key);
            let w = (100 / node.srv.len().max(1)).max(1) as u16;
            for srv in &mut node.srv {
                srv.weight = w;
            }
            node.srv.sort();
        }
    }

    /// The name of `key` (relative to the zone) as an absolute name.
    fn name_of(&self, key: &str) -> Option<Name> {
        if key.is_empty() {
            return Some(self.origin.clone());
        }
        Name::from_ascii(format!("{key}.{}", self.origin)).ok()
    }

    fn soa(&self) -> Record {
        let n = |l: &str| {
            Name::from_ascii(format!("{l}.{}", self.origin)).unwrap_or_else(|_| Name::root())
        };
        Record::from_rdata(
            self.origin.clone(),
            TTL,
            RData::SOA(SOA::new(
                n("ns.dns"),
                n("hostmaster"),
                self.serial,
                7200,
                1800,
                86400,
                TTL,
            )),
        )
    }

    /// `qname`'s labels below the zone, lowercase (`["web", "default", "svc"]`), or None when
    /// `qname` is not in the zone.
    fn relative(&self, qname: &Name) -> Option<Vec<String>> {
        let labels: Vec<String> = qname
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        if labels.len() < self.labels.len() || self.labels.is_empty() {
            return None;
        }
        let split = labels.len() - self.labels.len();
        (labels[split..] == self.labels[..]).then(|| labels[..split].to_vec())
    }

    /// Whether `qname` is the cluster domain or below it.
    pub fn contains(&self, qname: &Name) -> bool {
        self.relative(qname).is_some()
    }

    /// The answer to `qname`/`qtype` (class IN), or [`Lookup::Forward`].
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let Some(rel) = self.relative(qname) else {
            return match self.reverse(qname, qtype) {
                Some(a) => Lookup::Local(a),
                None => Lookup::Forward,
            };
        };
        if !self.synced {
            return Lookup::Local(Answer {
                rcode: ResponseCode::ServFail,
                ..Answer::default()
            });
        }
        let mut answer = Answer::default();
        // A label with a dot inside (`\.`) can never match a key.
        if rel.iter().any(|l| l.contains('.')) {
            return Lookup::Local(self.negative(answer, ResponseCode::NXDomain));
        }
        if let [ip, _ns, pod] = &rel[..]
            && pod == "pod"
        {
            return Lookup::Local(match undashed_v4(ip) {
                Some(addr) => {
                    if matches!(qtype, RecordType::A | RecordType::ANY) {
                        answer.answers.push(Record::from_rdata(
                            qname.clone(),
                            TTL,
                            RData::A(A(addr)),
                        ));
                        answer
                    } else {
                        self.negative(answer, ResponseCode::NoError)
                    }
                }
                None => self.negative(answer, ResponseCode::NXDomain),
            });
        }
        if let [_ns, pod] = &rel[..]
            && pod == "pod"
        {
            return Lookup::Local(self.negative(answer, ResponseCode::NoError));
        }
        let mut key = rel.join(".");
        let mut owner = qname.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            // (Also for a CNAME inside the zone to a name that does not exist: the code is
            // the last name's.)
            let Some(node) = self.nodes.get(&key) else {
                return Lookup::Local(self.negative(answer, ResponseCode::NXDomain));
            };
            if let Some(target) = &node.cname {
                answer.answers.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                    return Lookup::Local(answer);
                }
                match self.relative(target) {
                    Some(r) if !r.iter().any(|l| l.contains('.')) => {
                        key = r.join(".");
                        owner = target.clone();
                        continue;
                    }
                    Some(_) => return Lookup::Local(self.negative(answer, ResponseCode::NXDomain)),
                    None => {
                        answer.chase = Some(target.clone());
                        return Lookup::Local(answer);
                    }
                }
            }
            self.records(&key, node, &owner, qtype, &mut answer);
            if answer.answers.is_empty() {
                return Lookup::Local(self.negative(answer, ResponseCode::NoError));
            }
            return Lookup::Local(answer);
        }
        // A loop of ExternalNames inside the zone.
        Lookup::Local(Answer {
            rcode: ResponseCode::ServFail,
            ..Answer::default()
        })
    }

    /// Appends `node`'s records of type `qtype`, named `owner`, and SRV targets' addresses.
    fn records(&self, key: &str, node: &Node, owner: &Name, qtype: RecordType, out: &mut Answer) {
        let any = qtype == RecordType::ANY;
        if any || qtype == RecordType::A {
            for ip in &node.a {
                out.answers
                    .push(Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip))));
            }
        }
        if any || qtype == RecordType::AAAA {
            for ip in &node.aaaa {
                out.answers.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::AAAA(AAAA(*ip)),
                ));
            }
        }
        if any || qtype == RecordType::SRV {
            let mut targets = BTreeSet::new();
            for srv in &node.srv {
                let Some(target) = self.name_of(&srv.target) else {
                    continue;
                };
                out.answers.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, srv.weight, srv.port, target)),
                ));
                targets.insert(srv.target.as_str());
            }
            for t in targets {
                if let (Some(n), Some(name)) = (self.nodes.get(t), self.name_of(t)) {
                    for ip in &n.a {
                        out.additionals.push(Record::from_rdata(
                            name.clone(),
                            TTL,
                            RData::A(A(*ip)),
                        ));
                    }
                    for ip in &n.aaaa {
                        out.additionals.push(Record::from_rdata(
                            name.clone(),
                            TTL,
                            RData::AAAA(AAAA(*ip)),
                        ));
                    }
                }
            }
        }
        if key.is_empty() && (any || qtype == RecordType::SOA) {
            out.answers.push(self.soa());
        }
    }

    /// NXDOMAIN or NODATA, with the SOA for negative caching.
    fn negative(&self, mut answer: Answer, rcode: ResponseCode) -> Answer {
        answer.rcode = rcode;
        answer.authorities.push(self.soa());
        answer
    }

    /// PTR for an address the zone names; None for any other reverse name (upstream's).
    fn reverse(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) || !self.synced {
            return None;
        }
        let net = qname.parse_arpa_name().ok()?;
        if net.prefix_len() != net.max_prefix_len() {
            return None;
        }
        let key = self.ptr.get(&net.addr())?;
        let target = self.name_of(key)?;
        Some(Answer {
            answers: vec![Record::from_rdata(
                qname.clone(),
                TTL,
                RData::PTR(PTR(target)),
            )],
            ..Answer::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    fn slice(ns: &str, svc: &str, ports: Value, endpoints: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": format!("{svc}-x"),
                            "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4", "ports": ports, "endpoints": endpoints})
    }

    fn zone() -> Zone {
        let services = vec![
            svc(
                "default",
                "web",
                json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                 {"name": "dns", "port": 53, "protocol": "UDP"},
                                 {"port": 8080}]}),
            ),
            svc(
                "default",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            ),
            svc(
                "default",
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            svc(
                "default",
                "alias",
                json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
            ),
            svc("other", "empty", json!({"clusterIP": "None"})),
        ];
        let slices = vec![slice(
            "default",
            "db",
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
            json!([
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false}},
            ]),
        )];
        Zone::build("cluster.local", &services, &slices)
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn local(z: &Zone, name: &str, t: RecordType) -> Answer {
        match z.lookup(&n(name), t) {
            Lookup::Local(a) => a,
            Lookup::Forward => panic!("{name} {t} was forwarded"),
        }
    }

    fn rdata(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn cluster_ip_a_and_srv() {
        let z = zone();
        let a = local(&z, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdata(&a), ["10.96.0.10"]);
        assert_eq!(a.answers[0].ttl, TTL);
        // Case-insensitive; the answer keeps the question's spelling.
        let a = local(&z, "WEB.Default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["10.96.0.10"]);
        assert_eq!(
            a.answers[0].name.to_ascii(),
            "WEB.Default.svc.cluster.local."
        );

        let srv = local(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(rdata(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 1);
        let srv = local(
            &z,
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(rdata(&srv), ["0 100 53 web.default.svc.cluster.local."]);
        // Wrong protocol: no such name.
        let srv = local(
            &z,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(srv.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn nodata_for_other_types_and_empty_non_terminals() {
        let z = zone();
        for (name, t) in [
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("web.default.svc.cluster.local.", RecordType::MX),
            ("default.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("cluster.local.", RecordType::A),
            ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ("empty.other.svc.cluster.local.", RecordType::A),
        ] {
            let a = local(&z, name, t);
            assert_eq!(a.rcode, ResponseCode::NoError, "{name} {t}");
            assert!(a.answers.is_empty(), "{name} {t}");
            assert_eq!(a.authorities[0].record_type(), RecordType::SOA, "{name}");
        }
        let soa = local(&z, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn nxdomain_inside_the_zone_forward_outside() {
        let z = zone();
        for name in [
            "nope.default.svc.cluster.local.",
            "web.nope.svc.cluster.local.",
            "google.com.default.svc.cluster.local.",
            "x.cluster.local.",
            "a.b.web.default.svc.cluster.local.",
        ] {
            let a = local(&z, name, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{name}");
            assert_eq!(a.authorities.len(), 1);
        }
        for name in [
            "example.com.",
            "cluster.local.example.com.",
            "local.",
            "evilcluster.local.",
        ] {
            assert!(
                matches!(z.lookup(&n(name), RecordType::A), Lookup::Forward),
                "{name}"
            );
        }
    }

    #[test]
    fn headless_services_answer_ready_endpoints() {
        let z = zone();
        let a = local(&z, "db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["10.244.1.5", "10.244.1.6"]);
        let a = local(&z, "db-0.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["10.244.1.5"]);
        let a = local(
            &z,
            "10-244-1-6.db.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rdata(&a), ["10.244.1.6"]);
        // Not ready: not published.
        let a = local(
            &z,
            "10-244-1-7.db.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        let srv = local(
            &z,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            rdata(&srv),
            [
                "0 50 5432 10-244-1-6.db.default.svc.cluster.local.",
                "0 50 5432 db-0.db.default.svc.cluster.local.",
            ]
        );
        assert_eq!(srv.additionals.len(), 2);
    }

    #[test]
    fn publish_not_ready_addresses() {
        let services = vec![svc(
            "default",
            "db",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        )];
        let slices = vec![slice(
            "default",
            "db",
            json!([]),
            json!([{"addresses": ["10.244.1.7"], "conditions": {"ready": false}}]),
        )];
        let z = Zone::build("cluster.local", &services, &slices);
        let a = local(&z, "db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["10.244.1.7"]);
    }

    #[test]
    fn external_names_are_cnames() {
        let z = zone();
        let a = local(&z, "ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["example.com."]);
        assert_eq!(a.chase, Some(n("example.com.")));
        let a = local(&z, "ext.default.svc.cluster.local.", RecordType::CNAME);
        assert_eq!(rdata(&a), ["example.com."]);
        assert_eq!(a.chase, None);
        // A target inside the zone is followed here.
        let a = local(&z, "alias.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["web.default.svc.cluster.local.", "10.96.0.10"]);
        assert_eq!(a.chase, None);
    }

    #[test]
    fn external_name_loops_end() {
        let services = vec![
            svc(
                "a",
                "x",
                json!({"type": "ExternalName", "externalName": "y.a.svc.cluster.local"}),
            ),
            svc(
                "a",
                "y",
                json!({"type": "ExternalName", "externalName": "x.a.svc.cluster.local"}),
            ),
        ];
        let z = Zone::build("cluster.local", &services, &[]);
        let a = local(&z, "x.a.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::ServFail);
    }

    #[test]
    fn pod_names() {
        let z = zone();
        let a = local(&z, "10-244-3-9.anything.pod.cluster.local.", RecordType::A);
        assert_eq!(rdata(&a), ["10.244.3.9"]);
        let a = local(
            &z,
            "10-244-3-9.anything.pod.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        for bad in [
            "10-244-3.x.pod.cluster.local.",
            "10-244-3-999.x.pod.cluster.local.",
            "a-b-c-d.x.pod.cluster.local.",
        ] {
            assert_eq!(
                local(&z, bad, RecordType::A).rcode,
                ResponseCode::NXDomain,
                "{bad}"
            );
        }
    }

    #[test]
    fn reverse_names() {
        let z = zone();
        let a = local(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdata(&a), ["web.default.svc.cluster.local."]);
        let a = local(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdata(&a), ["db-0.db.default.svc.cluster.local."]);
        assert!(matches!(
            z.lookup(&n("1.1.1.1.in-addr.arpa."), RecordType::PTR),
            Lookup::Forward
        ));
    }

    #[test]
    fn unsynced_zone_fails_instead_of_denying() {
        let z = Zone::unsynced("cluster.local");
        let a = local(&z, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::ServFail);
        assert!(matches!(
            z.lookup(&n("example.com."), RecordType::A),
            Lookup::Forward
        ));
    }

    #[test]
    fn other_cluster_domains() {
        let z = Zone::build(
            "Corp.Example.",
            &[svc("default", "web", json!({"clusterIP": "10.96.0.10"}))],
            &[],
        );
        let a = local(&z, "web.default.svc.corp.example.", RecordType::A);
        assert_eq!(rdata(&a), ["10.96.0.10"]);
        assert!(matches!(
            z.lookup(&n("web.default.svc.cluster.local."), RecordType::A),
            Lookup::Forward
        ));
    }

    #[test]
    fn bad_objects_are_skipped() {
        let services = vec![
            svc("default", "a.b", json!({"clusterIP": "10.96.0.1"})),
            svc("", "x", json!({"clusterIP": "10.96.0.2"})),
            svc(
                "default",
                "ok",
                json!({"clusterIP": "bogus", "ports": [{"name": "Bad Name", "port": 1}, {"name": "p", "port": 70000}]}),
            ),
            json!(null),
        ];
        let z = Zone::build(
            "cluster.local",
            &services,
            &[
                json!({}),
                json!({"metadata": {"labels": {"kubernetes.io/service-name": "ok"}}}),
            ],
        );
        let a = local(&z, "ok.default.svc.cluster.local.", RecordType::A);
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(
            local(&z, "b.default.svc.cluster.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
    }
}
