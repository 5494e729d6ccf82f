//! One DNS question to one response: names in the cluster domain (and reverse names of cluster
//! addresses) from the current [`Zone`], everything else through the [`Forwarder`].
//!
//! Never panics on input: hickory's server drops messages shorter than a header and answers
//! undecodable ones with FORMERR before they get here; here, anything but a single-question
//! QUERY gets FORMERR or NOTIMP.

use std::sync::{Arc, RwLock};

use hickory_server::{
    net::runtime::Time,
    proto::{
        op::{Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode},
        rr::{DNSClass, Record, RecordType},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use super::{
    forward::{EDNS_PAYLOAD, ForwardError, Forwarder},
    zone::{Lookup, Zone},
};

/// The zone currently served; replaced whole on every change.
pub type SharedZone = Arc<RwLock<Arc<Zone>>>;

pub struct Handler {
    pub zone: SharedZone,
    pub forwarder: Forwarder,
}

/// A response before encoding.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn new(request: &Metadata, rcode: ResponseCode) -> Reply {
        let mut metadata = Metadata::response_from_request(request);
        metadata.recursion_available = true;
        metadata.response_code = rcode;
        Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

impl Handler {
    fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::new(&request.metadata, ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return Reply::new(&request.metadata, ResponseCode::FormErr);
        };
        let question = info.query.original().clone();
        let (qname, qtype, qclass) = (
            question.name(),
            question.query_type(),
            question.query_class(),
        );
        let zone = self.zone();
        let ours = zone.contains(qname);
        if ours && !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Reply::new(&request.metadata, ResponseCode::Refused);
        }
        let lookup = if qclass == DNSClass::IN || ours {
            zone.lookup(qname, qtype)
        } else {
            Lookup::Forward
        };
        drop(zone);
        match lookup {
            Lookup::Local(answer) => {
                let mut r = Reply::new(&request.metadata, answer.rcode);
                r.metadata.authoritative = answer.rcode != ResponseCode::ServFail;
                r.answers = answer.answers;
                r.authorities = answer.authorities;
                r.additionals = answer.additionals;
                if let Some(target) = answer.chase
                    && matches!(qtype, RecordType::A | RecordType::AAAA)
                {
                    // An ExternalName: the client wants addresses, so resolve the target
                    // upstream as a recursive server would (kept to the CNAME on failure).
                    match self.forwarder.resolve(Query::query(target, qtype)).await {
                        Ok(m) => {
                            if matches!(
                                m.metadata.response_code,
                                ResponseCode::NoError | ResponseCode::NXDomain
                            ) {
                                r.metadata.response_code = m.metadata.response_code;
                                r.answers.extend(m.answers);
                                r.authorities = m.authorities;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "dns: resolving a CNAME target"),
                    }
                }
                r
            }
            Lookup::Forward => match self.forwarder.forward(request.as_slice(), &question).await {
                Ok(m) => {
                    let mut r = Reply::new(&request.metadata, m.metadata.response_code);
                    r.metadata.authoritative = m.metadata.authoritative;
                    r.metadata.truncation = m.metadata.truncation;
                    r.answers = m.answers;
                    r.authorities = m.authorities;
                    r.additionals = m.additionals;
                    r
                }
                Err(e) => {
                    match e {
                        ForwardError::Failed(_) | ForwardError::Busy => {
                            tracing::debug!(name = %qname, error = %e, "dns: forwarding")
                        }
                        ForwardError::NoUpstreams => {}
                    }
                    Reply::new(&request.metadata, ResponseCode::ServFail)
                }
            },
        }
    }
}

#[tonic::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        // EDNS in, EDNS out (our buffer size); the encoder truncates UDP answers to what the
        // client can take (512 bytes without EDNS) and sets TC, so it retries over TCP.
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            e
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let failed = {
            let mut m = reply.metadata;
            m.response_code = ResponseCode::ServFail;
            m
        };
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns: sending a response");
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
