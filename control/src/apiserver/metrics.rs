//! Prometheus metrics for the API server and the member's raft state, served as text at
//! `/metrics` on the member's listen address (HTTP/1.1 beside gRPC).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    revision: Gauge,
    members: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_requests",
            "API requests by method and gRPC code",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "apiserver_request_duration_seconds",
            "API request latency",
            latency.clone(),
        );
        let g = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let term = g(&mut registry, "raft_term", "Current raft term");
        let leader = g(
            &mut registry,
            "raft_leader_id",
            "Id of the current leader (0: none)",
        );
        let is_leader = g(&mut registry, "raft_is_leader", "1 when this member leads");
        let applied_index = g(
            &mut registry,
            "raft_applied_index",
            "Last applied log index",
        );
        let last_log_index = g(&mut registry, "raft_last_log_index", "Last log index");
        let revision = g(
            &mut registry,
            "store_revision",
            "Latest applied store revision",
        );
        let members = g(
            &mut registry,
            "raft_members",
            "Members in the effective membership",
        );
        Self {
            registry,
            requests,
            latency,
            term,
            leader,
            is_leader,
            applied_index,
            last_log_index,
            revision,
            members,
        }
    }

    pub fn observe_request(&self, method: &'static str, code: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    /// Refreshes the raft gauges from `node` and renders the exposition text.
    pub fn render(&self, node: &Arc<Node>) -> String {
        let m = node.raft.metrics().borrow().clone();
        self.term.set(m.current_term as i64);
        self.leader.set(m.current_leader.unwrap_or(0) as i64);
        self.is_leader
            .set(i64::from(m.current_leader == Some(node.id)));
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        self.revision.set(node.sm.revision() as i64);
        self.members.set(node.members().len() as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
