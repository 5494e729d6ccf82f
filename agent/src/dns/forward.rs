//! Forwarding to the node's resolvers: names outside the cluster domain (and ExternalName
//! targets) are asked upstream, over UDP with a fresh random ID from a fresh random port, and
//! again over TCP when the UDP answer is truncated. Upstreams are tried in order, each with a
//! timeout; a SERVFAIL or REFUSED moves on to the next one.
//!
//! A reply is accepted only from the upstream asked (connected sockets), with the ID sent and
//! the question asked, so an off-path spoofer has to guess both port and ID.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use ring::rand::SecureRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long one upstream gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries forwarded at once; beyond that, SERVFAIL at once (no unbounded sockets under a flood).
const MAX_IN_FLIGHT: usize = 1024;
/// EDNS buffer size advertised upstream (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("too many queries in flight")]
    Busy,
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Arc<Vec<SocketAddr>>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SystemRandom fails only if the OS has no randomness at all.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder {
            upstreams: Arc::new(upstreams),
            timeout,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (a whole DNS message; its ID is replaced) upstream and returns the
    /// response to `question`.
    pub async fn forward(&self, query: &[u8], question: &Query) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        if query.len() < 12 {
            return Err(ForwardError::Failed("query shorter than a header".into()));
        }
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Busy)?;
        let mut last = Err(ForwardError::NoUpstreams);
        for up in self.upstreams.iter() {
            match exchange(*up, query, question, self.timeout).await {
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    last = Ok(m);
                }
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "dns: upstream failed");
                    if last.is_err() {
                        last = Err(ForwardError::Failed(format!("{up}: {e}")));
                    }
                }
            }
        }
        last
    }

    /// Asks upstream for `name`/`qtype` in a query of our own (an ExternalName's target).
    pub async fn resolve(&self, question: Query) -> Result<Message, ForwardError> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(question.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
        let bytes = m
            .to_vec()
            .map_err(|e| ForwardError::Failed(format!("encoding a query: {e}")))?;
        self.forward(&bytes, &question).await
    }
}

/// One upstream: UDP, then TCP if the answer was truncated.
async fn exchange(
    up: SocketAddr,
    query: &[u8],
    question: &Query,
    timeout: Duration,
) -> Result<Message, String> {
    let id = random_id();
    let mut q = query.to_vec();
    q[..2].copy_from_slice(&id.to_be_bytes());
    let m = tokio::time::timeout(timeout, udp(up, &q, id, question))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    if !m.metadata.truncation {
        return Ok(m);
    }
    tokio::time::timeout(timeout, tcp(up, &q, id, question))
        .await
        .map_err(|_| format!("no answer over TCP within {timeout:?}"))?
}

fn matches(m: &Message, id: u16, question: &Query) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && m.queries[0].name().eq_ignore_root(question.name())
        && m.queries[0].query_type() == question.query_type()
        && m.queries[0].query_class() == question.query_class()
}

async fn udp(up: SocketAddr, q: &[u8], id: u16, question: &Query) -> Result<Message, String> {
    let local: SocketAddr = match up {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(up).await.map_err(|e| e.to_string())?;
    sock.send(q).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // Anything else (late answers, garbage) is ignored until the timeout.
        if let Ok(m) = Message::from_vec(&buf[..n])
            && matches(&m, id, question)
        {
            return Ok(m);
        }
    }
}

async fn tcp(up: SocketAddr, q: &[u8], id: u16, question: &Query) -> Result<Message, String> {
    let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
    let len = u16::try_from(q.len()).map_err(|_| "query too long".to_string())?;
    let mut out = Vec::with_capacity(q.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(q);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    loop {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf).map_err(|e| format!("bad answer: {e}"))?;
        if matches(&m, id, question) {
            return Ok(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::{Name, RData, Record, RecordType, rdata::A};

    fn question() -> Query {
        Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A)
    }

    /// A UDP upstream that answers every query with `rcode` and, for NOERROR, one A record;
    /// `truncate` sets TC (and a TCP listener on the same port gives the full answer).
    async fn upstream(rcode: ResponseCode, truncate: bool) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let reply = move |req: &[u8], tc: bool| {
            let req = Message::from_vec(req).unwrap();
            let mut m = Message::response(req.metadata.id, req.metadata.op_code);
            m.metadata.response_code = rcode;
            m.metadata.truncation = tc;
            m.add_queries(req.queries.clone());
            if rcode == ResponseCode::NoError && !tc {
                m.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    30,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            }
            m.to_vec().unwrap()
        };
        if truncate {
            let l = tokio::net::TcpListener::bind(addr).await.unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let mut len = [0u8; 2];
                    s.read_exact(&mut len).await.unwrap();
                    let mut buf = vec![0; u16::from_be_bytes(len) as usize];
                    s.read_exact(&mut buf).await.unwrap();
                    let out = reply(&buf, false);
                    s.write_all(&(out.len() as u16).to_be_bytes())
                        .await
                        .unwrap();
                    s.write_all(&out).await.unwrap();
                }
            });
        }
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                // A stray answer with a wrong ID first: must be ignored.
                let mut wrong = reply(&buf[..n], truncate);
                wrong[0] ^= 0xff;
                let _ = sock.send_to(&wrong, from).await;
                let _ = sock.send_to(&reply(&buf[..n], truncate), from).await;
            }
        });
        addr
    }

    fn query_bytes() -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(question());
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn forwards_and_falls_over() {
        let dead = {
            // A port nobody answers on.
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.local_addr().unwrap()
        };
        let refused = upstream(ResponseCode::Refused, false).await;
        let good = upstream(ResponseCode::NoError, false).await;
        let f = Forwarder::new(vec![dead, refused, good], Duration::from_millis(300));
        let m = f.forward(&query_bytes(), &question()).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);

        let f = Forwarder::new(vec![refused], Duration::from_millis(300));
        let m = f.forward(&query_bytes(), &question()).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        let f = Forwarder::new(vec![dead], Duration::from_millis(200));
        assert!(matches!(
            f.forward(&query_bytes(), &question()).await,
            Err(ForwardError::Failed(_))
        ));
        let f = Forwarder::new(vec![], Duration::from_millis(200));
        assert!(matches!(
            f.forward(&query_bytes(), &question()).await,
            Err(ForwardError::NoUpstreams)
        ));
    }

    #[tokio::test]
    async fn truncated_answers_are_asked_again_over_tcp() {
        let up = upstream(ResponseCode::NoError, true).await;
        let f = Forwarder::new(vec![up], Duration::from_secs(2));
        let m = f.resolve(question()).await.unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);
    }
}
