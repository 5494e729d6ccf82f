//! Member-to-member transport: openraft RPCs over the `RaftInternal` gRPC service.
//!
//! This is the one place that converts openraft messages to and from wire payloads (JSON inside a
//! protobuf `bytes` field). Transport failures become `Unreachable` so openraft backs off; errors
//! raised by the remote raft come back as `RemoteError`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::proto::RaftPayload;
use ferry_api::proto::raft_internal_client::RaftInternalClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::store::{NodeId, TypeConfig};

/// Lazily connected mutual-TLS gRPC channels, one per member address, shared by raft
/// replication and request forwarding. Members authenticate to each other with their member
/// certificates and verify each other against the cluster CA.
#[derive(Clone)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: ClientTlsConfig,
}

impl ChannelPool {
    pub fn new(tls: ClientTlsConfig) -> Self {
        Self {
            channels: Arc::default(),
            tls,
        }
    }

    /// A channel to `addr` (host:port). Never blocks: the connection is made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.tls.clone())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft_client(
        &self,
        addr: &str,
    ) -> Result<RaftInternalClient<Channel>, tonic::transport::Error> {
        Ok(RaftInternalClient::new(self.get(addr)?).max_decoding_message_size(256 << 20))
    }
}

/// Creates per-target connections for openraft.
#[derive(Clone)]
pub struct Network {
    pub pool: ChannelPool,
}

pub struct Connection {
    target: NodeId,
    addr: String,
    pool: ChannelPool,
    /// The AppendEntries stream to this target, opened on first use and dropped on any error.
    stream: Option<AppendStream>,
    /// The target does not serve `AppendStream` (an older member): use unary calls.
    unary_only: bool,
}

/// One long-lived AppendEntries stream: a request message is answered by one reply message, and
/// openraft keeps one AppendEntries outstanding per target, so replies pair up with requests in
/// order. A per-call unary RPC costs a new HTTP/2 stream, its headers both ways and a task on the
/// follower; a stream message costs one DATA frame.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<RaftPayload>,
    replies: tonic::Streaming<RaftPayload>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            stream: None,
            unary_only: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

/// Wire encoding of raft messages: postcard (compact, no JSON escaping of stored values).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, postcard::Error> {
    Ok(RaftPayload {
        data: postcard::to_stdvec(v)?,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, postcard::Error> {
    postcard::from_bytes(&p.data)
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .pool
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&WireError(s.to_string()))))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How one streamed AppendEntries failed.
enum StreamFailure {
    /// The target has no `AppendStream` method.
    Unimplemented,
    Transport(String),
}

impl Connection {
    /// Sends `payload` on the AppendEntries stream (opening it if needed) and reads its reply.
    async fn stream_append(&mut self, payload: RaftPayload) -> Result<RaftPayload, StreamFailure> {
        let transport = |e: &dyn std::fmt::Display| StreamFailure::Transport(e.to_string());
        let stream = match &mut self.stream {
            Some(stream) => {
                stream
                    .requests
                    .send(payload)
                    .await
                    .map_err(|_| StreamFailure::Transport("append stream closed".into()))?;
                stream
            }
            None => {
                let (requests, rx) = tokio::sync::mpsc::channel(1);
                // Queued before the call so that it goes out with the stream's headers.
                requests.send(payload).await.map_err(|e| transport(&e))?;
                let mut client = self
                    .pool
                    .raft_client(&self.addr)
                    .map_err(|e| transport(&e))?;
                let replies = match client
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Ok(r) => r.into_inner(),
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        return Err(StreamFailure::Unimplemented);
                    }
                    Err(s) => return Err(transport(&s)),
                };
                self.stream.insert(AppendStream { requests, replies })
            }
        };
        match stream.replies.message().await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(StreamFailure::Transport(
                "append stream ended by the target".into(),
            )),
            Err(s) => Err(transport(&s)),
        }
    }

    async fn append_streamed(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let payload = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let outcome = tokio::time::timeout(option.hard_ttl(), self.stream_append(payload)).await;
        let failure = match outcome {
            Ok(Ok(reply)) => {
                let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                    match decode(&reply) {
                        Ok(r) => r,
                        Err(e) => {
                            self.stream = None;
                            return Err(RPCError::Network(NetworkError::new(&e)));
                        }
                    };
                return result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)));
            }
            Ok(Err(f)) => f,
            // A late reply would pair with the next request: the stream cannot be reused.
            Err(_) => StreamFailure::Transport(format!(
                "no AppendEntries reply within {:?}",
                option.hard_ttl()
            )),
        };
        self.stream = None;
        match failure {
            StreamFailure::Unimplemented => {
                self.unary_only = true;
                self.call(Rpc::Append, rpc, option).await
            }
            StreamFailure::Transport(m) => {
                Err(RPCError::Unreachable(Unreachable::new(&WireError(m))))
            }
        }
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if self.unary_only {
            return self.call(Rpc::Append, &rpc, &option).await;
        }
        self.append_streamed(&rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
