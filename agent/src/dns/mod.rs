//! Service discovery: the DNS server every node agent runs for its pods (kube-dns / CoreDNS's
//! role, but one per node, with no Service of its own).
//!
//! - Listens on UDP and TCP port 53 of the node's pod-bridge gateway address (the first address
//!   of its pod CIDR), which every pod on the node reaches directly over its bridge; pods with
//!   `dnsPolicy: ClusterFirst` get it as their only nameserver (`pods::worker`).
//! - Lists and watches Services and EndpointSlices (the agent's node credentials may) and,
//!   after every change (coalesced for a few milliseconds), rebuilds the whole [`zone::Zone`] and
//!   swaps it in; queries read the current one without waiting.
//! - Answers names in the cluster domain from the zone ([`zone`] has the naming scheme),
//!   forwards everything else to the node's resolvers ([`forward`]); SERVFAIL when there are
//!   none or none answers in time.
//!
//! It owns its sockets and nothing else on the node; it never writes to the API.

pub mod forward;
pub mod handler;
pub mod zone;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use ferry_api::client::Client;
use hickory_server::Server;
use serde_json::Value;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::watch,
};

use self::{forward::Forwarder, handler::Handler, zone::Zone};
use crate::informer::{Informer, lock};

/// The port pods' resolvers use (resolv.conf cannot name another).
pub const DEFAULT_PORT: u16 = 53;
/// How long changes are gathered before the zone is rebuilt.
const COALESCE: Duration = Duration::from_millis(20);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// resolv.conf's limit, kept for upstreams too.
const MAX_UPSTREAMS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: hickory_server::net::NetError,
    },
}

#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Where to listen (UDP and TCP): the pod bridge's gateway, port 53.
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Resolvers for everything outside the cluster domain, in order.
    pub upstreams: Vec<SocketAddr>,
}

impl DnsOptions {
    /// The options of an agent whose pod network is up: its gateway address, its cluster
    /// domain, and `--dns-upstream` or else the node's own resolvers (non-loopback ones from
    /// /etc/resolv.conf, as pods get them; with only systemd-resolved's stub there, the
    /// resolvers it uses, from /run/systemd/resolve/resolv.conf).
    pub fn for_node(opts: &crate::AgentOptions, shared: &crate::pods::Shared) -> DnsOptions {
        let mut upstreams: Vec<SocketAddr> = if opts.dns_upstreams.is_empty() {
            let mut ips = shared.dns.nameservers.clone();
            if ips.is_empty() {
                ips = nameservers_in(
                    &std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
                        .unwrap_or_default(),
                );
            }
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
                .collect()
        } else {
            opts.dns_upstreams.clone()
        };
        let listen = SocketAddr::new(shared.network.gateway().into(), DEFAULT_PORT);
        // Never forward to ourselves.
        upstreams.retain(|u| *u != listen);
        upstreams.truncate(MAX_UPSTREAMS);
        DnsOptions {
            listen,
            cluster_domain: opts.cluster_domain.clone(),
            upstreams,
        }
    }
}

/// Non-loopback `nameserver` addresses of a resolv.conf.
fn nameservers_in(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then_some(())?;
            w.next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// Starts the DNS server as a task of its own; failures are logged.
pub fn spawn(client: Client, opts: DnsOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(client, opts).await {
            tracing::error!(
                "cluster DNS is off on this node: {}",
                crate::node::error_chain(&e)
            );
        }
    })
}

/// Binds UDP and TCP on `addr`, retrying until both succeed (the address may be busy for a
/// moment, e.g. while a previous agent's sockets close).
async fn bind(addr: SocketAddr) -> (UdpSocket, TcpListener) {
    let mut delay = Duration::from_millis(500);
    loop {
        let r = async {
            let udp = UdpSocket::bind(addr).await?;
            let tcp = TcpListener::bind(addr).await?;
            Ok::<_, std::io::Error>((udp, tcp))
        }
        .await;
        match r {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "dns: cannot listen yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A hickory server answering with `handler` on bound sockets (its tasks run until dropped).
fn serve(udp: UdpSocket, tcp: TcpListener, handler: Handler) -> Server<Handler> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
    server
}

/// Serves DNS on `opts.listen` until the sockets fail.
pub async fn run(client: Client, opts: DnsOptions) -> Result<(), DnsError> {
    let zone: handler::SharedZone =
        Arc::new(RwLock::new(Arc::new(Zone::unsynced(&opts.cluster_domain))));
    let forwarder = Forwarder::new(opts.upstreams.clone(), forward::UPSTREAM_TIMEOUT);
    let (udp, tcp) = bind(opts.listen).await;
    let mut server = serve(
        udp,
        tcp,
        Handler {
            zone: zone.clone(),
            forwarder,
        },
    );
    if opts.upstreams.is_empty() {
        tracing::warn!("dns: no upstream resolvers: names outside the cluster domain get SERVFAIL");
    }
    tracing::info!(
        listen = %opts.listen,
        domain = %opts.cluster_domain,
        upstreams = ?opts.upstreams,
        "cluster DNS listening"
    );

    let (changed_tx, mut changed) = watch::channel(0u64);
    let services = Informer::start(client.clone(), "Service", changed_tx.clone());
    let slices = Informer::start(client, "EndpointSlice", changed_tx);
    let domain = opts.cluster_domain.clone();
    let rebuild = async move {
        // Until both kinds are listed the zone stays unsynced (SERVFAIL, never NXDOMAIN).
        services.wait_synced().await;
        slices.wait_synced().await;
        let mut first = true;
        loop {
            tokio::time::sleep(COALESCE).await;
            changed.borrow_and_update();
            let started = Instant::now();
            let (services, slices, domain) =
                (services.cache.clone(), slices.cache.clone(), domain.clone());
            let current = zone.clone();
            let built = tokio::task::spawn_blocking(move || {
                let svcs: Vec<Arc<Value>> = lock(&services).values().cloned().collect();
                let eps: Vec<Arc<Value>> = lock(&slices).values().cloned().collect();
                let new = Zone::build(&domain, svcs.iter().map(|v| &**v), eps.iter().map(|v| &**v));
                let old = std::mem::replace(
                    &mut *current.write().unwrap_or_else(|p| p.into_inner()),
                    Arc::new(new),
                );
                // Freed here (unless a query still holds it): outside the lock, off the async workers.
                drop(old);
                svcs.len()
            })
            .await;
            match built {
                Ok(n) => {
                    let took_us = started.elapsed().as_micros() as u64;
                    if first {
                        tracing::info!(services = n, took_us, "cluster DNS zone ready");
                        first = false;
                    } else {
                        tracing::debug!(services = n, took_us, "cluster DNS zone rebuilt");
                    }
                }
                Err(e) => tracing::error!("dns: building the zone: {e}"),
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        r = server.block_until_done() => r.map_err(|source| DnsError::Serve { addr: opts.listen, source }),
        _ = rebuild => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::{
        op::{Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream answering every A question with 192.0.2.7.
    async fn fake_upstream() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut m = Message::response(req.metadata.id, req.metadata.op_code);
                m.add_queries(req.queries.clone());
                m.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 7)),
                ));
                let _ = sock.send_to(&m.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    async fn ask(c: &UdpSocket, bytes: &[u8]) -> Option<Message> {
        c.send(bytes).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(Duration::from_millis(500), c.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(Message::from_vec(&buf[..n]).unwrap())
    }

    #[tokio::test]
    async fn serves_the_zone_forwards_and_survives_bad_input() {
        let endpoints: Vec<Value> = (1..=60)
            .map(|i| json!({"addresses": [format!("10.244.0.{i}")], "conditions": {"ready": true}}))
            .collect();
        let zone = Zone::build(
            "cluster.local",
            &[
                json!({"metadata": {"namespace": "default", "name": "web"},
                       "spec": {"clusterIP": "10.96.0.10"}}),
                json!({"metadata": {"namespace": "default", "name": "many"},
                       "spec": {"clusterIP": "None"}}),
            ],
            &[
                json!({"metadata": {"namespace": "default", "name": "many-x",
                                  "labels": {"kubernetes.io/service-name": "many"}},
                     "addressType": "IPv4", "endpoints": endpoints}),
            ],
        );
        let handler = Handler {
            zone: Arc::new(RwLock::new(Arc::new(zone))),
            forwarder: Forwarder::new(vec![fake_upstream().await], Duration::from_secs(1)),
        };
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let _server = serve(udp, tcp, handler);
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(addr).await.unwrap();

        let web = query("web.default.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        let m = ask(&c, &web).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.10");

        // Garbage shorter than a header: dropped.
        assert!(ask(&c, &[1, 2, 3]).await.is_none());
        // A header announcing a question that is not there: FORMERR.
        let mut bad = web[..12].to_vec();
        bad.extend_from_slice(&[0xff; 7]);
        let m = ask(&c, &bad).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Two questions: FORMERR.
        let mut two = query("web.default.svc.cluster.local.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let m = ask(&c, &two.to_vec().unwrap()).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Not a QUERY: NOTIMP.
        let mut status = query("web.default.svc.cluster.local.", RecordType::A);
        status.metadata.op_code = OpCode::Status;
        let m = ask(&c, &status.to_vec().unwrap()).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        // A response sent to us: ignored.
        let mut resp = query("web.default.svc.cluster.local.", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert!(ask(&c, &resp.to_vec().unwrap()).await.is_none());

        // Outside the cluster domain: the upstream's answer, not authoritative.
        let m = ask(&c, &query("example.com.", RecordType::A).to_vec().unwrap())
            .await
            .unwrap();
        assert_eq!(m.answers[0].data.to_string(), "192.0.2.7");
        assert!(!m.metadata.authoritative);

        // 60 addresses do not fit in 512 bytes: TC over UDP, everything over TCP.
        let many = query("many.default.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        let m = ask(&c, &many).await.unwrap();
        assert!(m.metadata.truncation);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&(many.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&many).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);

        // Still serving after all that.
        let m = ask(&c, &web).await.unwrap();
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch a b\nnameserver fd00::1\nnameserver bogus\n";
        assert_eq!(
            nameservers_in(text),
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }
}
