//! A control-plane member: the raft instance, its state machine, leader forwarding and membership.
//!
//! Owns the rules that make any member able to serve any request: writes and linearizable read
//! barriers go to the leader (locally or forwarded over `RaftInternal.Forward`); reads are then
//! served from the local state machine. Never interprets resource semantics (that is the API
//! server's job).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::proto::raft_internal_server::RaftInternal;
use ferry_api::proto::{JoinRequest, JoinResponse, RaftPayload};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::raft_net::{ChannelPool, Network, decode, encode};
use crate::store::{Command, CommandResult, LogStore, NodeId, Precondition, Raft, StateMachine};

/// Store key holding the highest member id ever handed out, so removed ids are never reused.
const MEMBER_ID_KEY: &str = "/_ferry/member-id-high-water";

/// How long a write or read barrier keeps retrying while there is no reachable leader.
const LEADER_WAIT: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("opening the store in {dir}: {source}")]
    Open { dir: PathBuf, source: redb::Error },
    #[error("creating data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader reachable within {0:?}; is a majority of members running?")]
    NoLeader(Duration),
    #[error("forwarding to the leader at {addr}: {message}")]
    Forward { addr: String, message: String },
    #[error("membership change failed: {0}")]
    Membership(String),
}

/// Tunables of a member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The address other members and clients reach this member at (host:port).
    pub advertise_addr: String,
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot after this many log entries; purge the log behind it.
    pub snapshot_logs: u64,
    /// Revisions of change history kept for watches.
    pub history_retention: u64,
    /// How this member talks to the others (its member certificate, the cluster CA).
    pub peer_tls: tonic::transport::ClientTlsConfig,
}

impl NodeConfig {
    pub fn new(
        id: NodeId,
        advertise_addr: String,
        data_dir: PathBuf,
        peer_tls: tonic::transport::ClientTlsConfig,
    ) -> Self {
        Self {
            peer_tls,
            id,
            advertise_addr,
            data_dir,
            heartbeat_ms: 50,
            election_timeout_ms: (300, 600),
            snapshot_logs: 10_000,
            history_retention: 50_000,
        }
    }
}

/// Requests a follower hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum Forward {
    Write(Command),
    ReadIndex,
    AddMember { id: NodeId, addr: String },
    RemoveMember { id: NodeId },
}

#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Written(CommandResult),
    ReadIndex(u64),
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ForwardFailure {
    NotLeader,
    Failed(String),
}

/// A member as seen in the membership config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// A write waiting for the batcher, and where its result goes.
type Pending = (
    Command,
    tokio::sync::oneshot::Sender<Result<CommandResult, ForwardFailure>>,
);

/// One control-plane member.
pub struct Node {
    batch_tx: tokio::sync::mpsc::UnboundedSender<Pending>,
    /// One permit per raft write in flight (see [`MAX_INFLIGHT`]), shared with the batcher.
    write_slots: Arc<tokio::sync::Semaphore>,
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachine,
    pool: ChannelPool,
}

impl Node {
    /// Opens the member's storage and starts its raft instance (not yet serving).
    pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
            dir: cfg.data_dir.clone(),
            source,
        })?;
        let log = LogStore::open(&cfg.data_dir.join("raft-log.redb")).map_err(|source| {
            NodeError::Open {
                dir: cfg.data_dir.clone(),
                source,
            }
        })?;
        let sm = StateMachine::open(&cfg.data_dir, cfg.history_retention).map_err(|source| {
            NodeError::Open {
                dir: cfg.data_dir.clone(),
                source,
            }
        })?;
        let config = Config {
            cluster_name: "ferry".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms.0,
            election_timeout_max: cfg.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.snapshot_logs / 4,
            max_payload_entries: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let pool = ChannelPool::new(cfg.peer_tls.clone());
        let raft = Raft::new(
            cfg.id,
            Arc::new(config),
            Network { pool: pool.clone() },
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let (batch_tx, batch_rx) = tokio::sync::mpsc::unbounded_channel();
        let write_slots = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
        tokio::spawn(batcher(raft.clone(), write_slots.clone(), batch_rx));
        Ok(Arc::new(Node {
            batch_tx,
            write_slots,
            id: cfg.id,
            addr: cfg.advertise_addr,
            raft,
            sm,
            pool,
        }))
    }

    /// Makes this member the single voter of a new cluster, unless it already belongs to one.
    pub async fn bootstrap(&self) -> Result<(), NodeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        members.insert(
            self.id,
            BasicNode {
                addr: self.addr.clone(),
            },
        );
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    pub fn pool(&self) -> &ChannelPool {
        &self.pool
    }

    /// The current leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The raft term this member leads in, if it leads.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// All members (voters and learners) from the effective membership.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Replicates one command and returns its result, forwarding to the leader if needed.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, NodeError> {
        match self.leader_call(Forward::Write(cmd)).await? {
            ForwardReply::Written(r) => Ok(r),
            other => Err(NodeError::Raft(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// Waits until this member's state machine reflects every write committed before the call
    /// (the read-index protocol): afterwards local reads are linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let index = match self.leader_call(Forward::ReadIndex).await? {
            ForwardReply::ReadIndex(i) => i,
            other => {
                return Err(NodeError::Raft(format!(
                    "unexpected reply to a read index: {other:?}"
                )));
            }
        };
        if index == 0 {
            return Ok(());
        }
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| NodeError::Raft(format!("waiting to apply index {index}: {e}")))?;
        Ok(())
    }

    /// Adds a member: as a learner until it has caught up, then as a voter.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), NodeError> {
        self.leader_call(Forward::AddMember { id, addr })
            .await
            .map(|_| ())
    }

    pub async fn remove_member(&self, id: NodeId) -> Result<(), NodeError> {
        self.leader_call(Forward::RemoveMember { id })
            .await
            .map(|_| ())
    }

    /// Hands out a member id never used before in this cluster.
    pub async fn allocate_member_id(&self) -> Result<NodeId, NodeError> {
        loop {
            self.read_barrier().await?;
            let (current, _) = self
                .sm
                .get(MEMBER_ID_KEY)
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            let in_use = self.members().iter().map(|m| m.id).max().unwrap_or(0);
            let high = current
                .as_ref()
                .and_then(|kv| kv.value.parse::<u64>().ok())
                .unwrap_or(0);
            let next = high.max(in_use) + 1;
            let precondition = match &current {
                Some(kv) => Precondition::ModRevision(kv.mod_revision),
                None => Precondition::Absent,
            };
            let cmd = Command::Put {
                key: MEMBER_ID_KEY.into(),
                value: next.to_string(),
                precondition,
            };
            if let CommandResult::Applied { .. } = self.write(cmd).await? {
                return Ok(next);
            }
        }
    }

    /// Runs `req` on the leader: here if this member leads, else over the wire. Retries while the
    /// cluster has no leader or the leader moves, up to [`LEADER_WAIT`].
    async fn leader_call(&self, req: Forward) -> Result<ForwardReply, NodeError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id => match self.handle_locally(&req).await {
                    Ok(r) => return Ok(r),
                    Err(ForwardFailure::NotLeader) => None,
                    Err(ForwardFailure::Failed(m)) => return Err(NodeError::Raft(m)),
                },
                Some((_, addr)) => match self.forward(&addr, &req).await {
                    Ok(r) => return Ok(r),
                    Err(Retry::Yes(m)) => Some(m),
                    Err(Retry::No(e)) => return Err(e),
                },
                None => None,
            };
            if start.elapsed() > LEADER_WAIT {
                if let Some(m) = attempt {
                    tracing::warn!("giving up on leader call: {m}");
                }
                return Err(NodeError::NoLeader(LEADER_WAIT));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    async fn forward(&self, addr: &str, req: &Forward) -> Result<ForwardReply, Retry> {
        let payload = encode(req).map_err(|e| Retry::No(NodeError::Raft(e.to_string())))?;
        let mut client = self.pool.raft_client(addr).map_err(|e| {
            Retry::No(NodeError::Forward {
                addr: addr.into(),
                message: e.to_string(),
            })
        })?;
        let mut request = Request::new(payload);
        request.set_timeout(LEADER_WAIT);
        match client.forward(request).await {
            Ok(reply) => {
                let r: Result<ForwardReply, ForwardFailure> =
                    decode(reply.get_ref()).map_err(|e| {
                        Retry::No(NodeError::Forward {
                            addr: addr.into(),
                            message: e.to_string(),
                        })
                    })?;
                match r {
                    Ok(r) => Ok(r),
                    Err(ForwardFailure::NotLeader) => {
                        Err(Retry::Yes(format!("{addr} is no longer the leader")))
                    }
                    Err(ForwardFailure::Failed(m)) => Err(Retry::No(NodeError::Forward {
                        addr: addr.into(),
                        message: m,
                    })),
                }
            }
            // The leader could not be reached at all: nothing was proposed, so retrying is safe.
            Err(s) if s.code() == tonic::Code::Unavailable && !matches!(req, Forward::Write(_)) => {
                Err(Retry::Yes(s.message().to_string()))
            }
            Err(s) if s.code() == tonic::Code::Unavailable && is_connect_error(&s) => {
                Err(Retry::Yes(s.message().to_string()))
            }
            Err(s) => Err(Retry::No(NodeError::Forward {
                addr: addr.into(),
                message: s.message().to_string(),
            })),
        }
    }

    async fn handle_locally(&self, req: &Forward) -> Result<ForwardReply, ForwardFailure> {
        match req {
            Forward::Write(cmd) => {
                // With no write in flight there is nothing to batch with: propose directly,
                // saving the hand-offs to the batcher and back.
                if self.write_slots.available_permits() == MAX_INFLIGHT
                    && let Ok(slot) = self.write_slots.clone().try_acquire_owned()
                {
                    let result = self.raft.client_write(cmd.clone()).await.map(|r| r.data);
                    drop(slot);
                    return write_outcome(result).map(ForwardReply::Written);
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.batch_tx
                    .send((cmd.clone(), tx))
                    .map_err(|_| ForwardFailure::Failed("the write batcher stopped".into()))?;
                match rx.await {
                    Ok(r) => r.map(ForwardReply::Written),
                    Err(_) => Err(ForwardFailure::Failed(
                        "the write batcher dropped a write".into(),
                    )),
                }
            }
            Forward::ReadIndex => match self.raft.ensure_linearizable().await {
                Ok(log_id) => Ok(ForwardReply::ReadIndex(log_id.map_or(0, |l| l.index))),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(
                    ForwardToLeader { .. },
                ))) => Err(ForwardFailure::NotLeader),
                // Right after an election or restart the followers may not have answered a
                // heartbeat yet: transient, so retried like a leader change.
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    Err(ForwardFailure::NotLeader)
                }
                Err(e) => Err(ForwardFailure::Failed(e.to_string())),
            },
            Forward::AddMember { id, addr } => {
                let node = BasicNode { addr: addr.clone() };
                match self.raft.add_learner(*id, node, true).await {
                    Ok(_) => {}
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        return Err(ForwardFailure::NotLeader);
                    }
                    Err(e) => return Err(ForwardFailure::Failed(e.to_string())),
                }
                let mut ids = BTreeSet::new();
                ids.insert(*id);
                match self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                {
                    Ok(_) => Ok(ForwardReply::Done),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        Err(ForwardFailure::NotLeader)
                    }
                    Err(e) => Err(ForwardFailure::Failed(e.to_string())),
                }
            }
            Forward::RemoveMember { id } => {
                let mut ids = BTreeSet::new();
                ids.insert(*id);
                let is_voter = self.members().iter().any(|m| m.id == *id && m.voter);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                match self.raft.change_membership(change, false).await {
                    Ok(_) => Ok(ForwardReply::Done),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        Err(ForwardFailure::NotLeader)
                    }
                    Err(e) => Err(ForwardFailure::Failed(e.to_string())),
                }
            }
        }
    }
}

enum Retry {
    Yes(String),
    No(NodeError),
}

/// True when a gRPC failure happened while connecting, i.e. before any request left this member.
fn is_connect_error(s: &Status) -> bool {
    let text = format!("{s:?}").to_ascii_lowercase();
    text.contains("connection refused")
        || text.contains("tcp connect error")
        || text.contains("dns error")
}

/// The `RaftInternal` gRPC service: raft RPCs, forwarding and joins.
pub struct RaftService {
    pub node: Arc<Node>,
}

fn bad_payload(e: postcard::Error) -> Status {
    Status::invalid_argument(format!("malformed raft payload: {e}"))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
}

/// Replies of one AppendEntries stream (see [`RaftService::append_stream`]).
pub type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl RaftInternal for RaftService {
    type AppendStreamStream = AppendReplies;

    /// AppendEntries requests on one stream, each answered in order. The reply stream itself
    /// reads the next request and runs it when polled: no task or channel per message.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        let inbound = req.into_inner();
        let node = self.node.clone();
        let replies = futures::stream::unfold(Some((inbound, node)), |state| async move {
            let (mut inbound, node) = state?;
            let payload = match inbound.message().await {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(s) => return Some((Err(s), None)),
            };
            let rpc = match decode(&payload) {
                Ok(rpc) => rpc,
                Err(e) => return Some((Err(bad_payload(e)), None)),
            };
            let result = node.raft.append_entries(rpc).await;
            match encode(&result) {
                Ok(p) => Some((Ok(p), Some((inbound, node)))),
                Err(e) => Some((Err(Status::internal(e.to_string())), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let fwd: Forward = decode(req.get_ref()).map_err(bad_payload)?;
        let result: Result<ForwardReply, ForwardFailure> = self.node.handle_locally(&fwd).await;
        reply(&result)
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        // A member may only add itself: the id must be the one in its certificate.
        let caller = req
            .extensions()
            .get::<crate::pki::UserInfo>()
            .map(|u| u.name.clone());
        let req = req.into_inner();
        if req.addr.is_empty() || req.id == 0 {
            return Err(Status::invalid_argument(
                "addr and id: required (the joining member's host:port and its member id)",
            ));
        }
        if caller.as_deref() != Some(format!("system:ferry-member:{}", req.id).as_str()) {
            return Err(Status::permission_denied(format!(
                "{caller:?} may not add member {}: a member can only add itself",
                req.id
            )));
        }
        let to_status = |e: NodeError| Status::unavailable(e.to_string());
        if self
            .node
            .members()
            .iter()
            .any(|m| m.id == req.id && m.voter && m.addr == req.addr)
        {
            return Ok(Response::new(JoinResponse { id: req.id }));
        }
        self.node
            .add_member(req.id, req.addr)
            .await
            .map_err(to_status)?;
        Ok(Response::new(JoinResponse { id: req.id }))
    }
}

/// Raft writes (batches) in flight at once.
const MAX_INFLIGHT: usize = 2;

/// Group commit above openraft. openraft 0.9 appends (and fsyncs) each `client_write` on its
/// own and waits for that before taking the next, so concurrent writes are folded here into one
/// raft entry ([`Command::Batch`]). At most [`MAX_INFLIGHT`] batches are in raft at once; while
/// they are, new writes queue up and form the next batch. A lone write is proposed as itself
/// (and one that finds nothing in flight skips the batcher: `Node::handle_locally`).
async fn batcher(
    raft: Raft,
    slots: Arc<tokio::sync::Semaphore>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>,
) {
    const MAX_BATCH: usize = 1024;
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        tokio::spawn(write_batch(raft.clone(), batch, slot));
    }
}

/// Proposes `batch` as one raft entry (a single command as itself) and answers each write.
async fn write_batch(raft: Raft, batch: Vec<Pending>, slot: tokio::sync::OwnedSemaphorePermit) {
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let single = cmds.len() == 1;
    let cmd = if single {
        cmds.into_iter().next().expect("one command")
    } else {
        Command::Batch(cmds)
    };
    let result = raft.client_write(cmd).await;
    drop(slot);
    match result.map(|r| r.data) {
        Ok(CommandResult::Batch(results)) if !single => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        other => {
            let r = write_outcome(other);
            for reply in replies {
                let _ = reply.send(r.clone());
            }
        }
    }
}

/// What a proposer tells its writer about a raft write's result.
fn write_outcome(
    result: Result<CommandResult, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
) -> Result<CommandResult, ForwardFailure> {
    match result {
        Ok(r) => Ok(r),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ForwardFailure::NotLeader)
        }
        Err(e) => Err(ForwardFailure::Failed(e.to_string())),
    }
}
