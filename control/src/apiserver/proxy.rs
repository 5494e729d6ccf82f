//! `ferry logs` and `ferry exec`: the API server checks RBAC (`get pods/log`,
//! `create pods/exec`), finds the pod's node, and relays the call to that node's agent over
//! mutual TLS (this member's certificate; the agent's certificate must name the node), as the
//! Kubernetes API server does with the kubelet.

use std::pin::Pin;

use ferry_api::proto::{
    ExecChunk, LogChunk, PodExecRequest, PodLogsRequest, agent_client::AgentClient,
};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::Status;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{ApiError, ApiResult, ApiServer, kind_info};
use crate::pki::UserInfo;

pub type ProxyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The agent endpoint of the node a pod runs on.
struct Target {
    node: String,
    addr: String,
    uid: String,
    container: String,
}

impl ApiServer {
    async fn target(
        &self,
        user: Option<&UserInfo>,
        verb: &str,
        sub: &str,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> ApiResult<Target> {
        let pods = kind_info("Pod")?;
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.authorize_sub(user, pods, verb, sub, ns, pod)?;
        // Reading the pod is this request's business, not the caller's `get pods` right.
        let obj = self.get(None, "Pod", ns, pod).await?;
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let node = s("/spec/nodeName");
        if node.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "pod {pod:?} is not scheduled to a node yet"
            )));
        }
        let names: Vec<String> = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                obj.pointer("/spec/initContainers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        let container = if container.is_empty() {
            let main = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if main != 1 {
                return Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
            names[0].clone()
        } else if names.iter().any(|n| n == container) {
            container.to_owned()
        } else {
            return Err(ApiError::BadRequest(format!(
                "container {container} is not valid for pod {pod}: choose one of: [{}]",
                names.join(" ")
            )));
        };
        let n = self.get(None, "Node", "", &node).await?;
        let ip = n
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
            .and_then(|a| a["address"].as_str())
            .ok_or_else(|| {
                ApiError::AgentUnavailable(format!("node {node:?} has no InternalIP address"))
            })?
            .to_owned();
        let port = n
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                ApiError::AgentUnavailable(format!(
                    "node {node:?} does not publish its agent endpoint (an agent of this version registers it)"
                ))
            })?;
        let addr = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        Ok(Target {
            node,
            addr,
            uid: s("/metadata/uid"),
            container,
        })
    }

    async fn agent(&self, t: &Target) -> ApiResult<AgentClient<tonic::transport::Channel>> {
        let tls = self.agent_tls.as_ref().ok_or_else(|| {
            ApiError::AgentUnavailable(
                "this member cannot call node agents (no credentials)".into(),
            )
        })?;
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .domain_name(t.node.clone());
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::AgentUnavailable(format!(
                "the agent of node {:?} at {} is unreachable: {e}",
                t.node, t.addr
            ))
        };
        let channel = Endpoint::from_shared(format!("https://{}", t.addr))
            .map_err(|e| unreachable(&e))?
            .tls_config(config)
            .map_err(|e| unreachable(&e))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(AgentClient::new(channel))
    }

    pub async fn proxy_logs(
        &self,
        user: Option<&UserInfo>,
        mut req: PodLogsRequest,
    ) -> ApiResult<ProxyStream<LogChunk>> {
        let t = self
            .target(user, "get", "log", &req.namespace, &req.pod, &req.container)
            .await?;
        req.uid = t.uid.clone();
        req.container = t.container.clone();
        let mut agent = self.agent(&t).await?;
        let stream = agent.logs(req).await.map_err(from_agent)?.into_inner();
        Ok(Box::pin(stream.map(|r| {
            r.map_err(|s| Status::new(s.code(), s.message().to_owned()))
        })))
    }

    pub async fn proxy_exec(
        &self,
        user: Option<&UserInfo>,
        mut req: PodExecRequest,
    ) -> ApiResult<ProxyStream<ExecChunk>> {
        if req.command.is_empty() {
            return Err(ApiError::BadRequest("command: required".into()));
        }
        let t = self
            .target(
                user,
                "create",
                "exec",
                &req.namespace,
                &req.pod,
                &req.container,
            )
            .await?;
        req.uid = t.uid.clone();
        req.container = t.container.clone();
        let mut agent = self.agent(&t).await?;
        let stream = agent.exec(req).await.map_err(from_agent)?.into_inner();
        Ok(Box::pin(stream.map(|r| {
            r.map_err(|s| Status::new(s.code(), s.message().to_owned()))
        })))
    }
}

/// An agent's refusal, passed on with its meaning.
fn from_agent(s: Status) -> ApiError {
    match s.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            ApiError::BadRequest(s.message().to_owned())
        }
        _ => ApiError::AgentUnavailable(s.message().to_owned()),
    }
}

/// A copy of `e` with the same outcome code (for the audit log; errors are not `Clone`).
pub(super) fn echo(e: &ApiError) -> ApiError {
    match e {
        ApiError::Forbidden(m) => ApiError::Forbidden(m.clone()),
        ApiError::NotFound { plural, name } => ApiError::NotFound {
            plural: plural.clone(),
            name: name.clone(),
        },
        ApiError::AgentUnavailable(m) => ApiError::AgentUnavailable(m.clone()),
        ApiError::Internal(m) => ApiError::Internal(m.clone()),
        other => ApiError::BadRequest(other.to_string()),
    }
}
