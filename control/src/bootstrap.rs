//! Joining with a token: the `Bootstrap` service (server side) and the joining member's side.
//!
//! A join token is `ferry1.<sha256 of the CA certificate>.<id>.<secret>`. The joiner first
//! learns the CA from the TLS handshake (servers send their chain) without trusting it, keeps
//! it only if its hash matches the token, and then talks to the cluster over TLS verified
//! against that CA. It sends the token and a CSR; the member checks the token's secret against
//! the hash replicated in the store, allocates a member id and signs the key.

use std::sync::Arc;

use ferry_api::proto::bootstrap_client::BootstrapClient;
use ferry_api::proto::bootstrap_server::Bootstrap;
use ferry_api::proto::{JoinMemberRequest, JoinMemberResponse, JoinNodeRequest, JoinNodeResponse};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::node::{Node, NodeError};
use crate::pki::{self, JoinToken, Pki};
use crate::store::{Command, CommandResult, Precondition};

/// What the store keeps about a bootstrap token: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub secret_sha256: String,
    pub usages: Vec<String>,
    pub created_at: String,
    /// RFC 3339; none: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Replicates `token`'s hashed secret; idempotent.
pub async fn store_token(
    node: &Node,
    token: &JoinToken,
    usages: &[&str],
    expires_at: Option<String>,
) -> Result<(), NodeError> {
    let record = TokenRecord {
        secret_sha256: token.secret_hash(),
        usages: usages.iter().map(|s| s.to_string()).collect(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        expires_at,
    };
    let value = serde_json::to_string(&record).map_err(|e| NodeError::Raft(e.to_string()))?;
    match node
        .write(Command::Put {
            key: token.store_key(),
            value,
            precondition: Precondition::Absent,
        })
        .await?
    {
        CommandResult::Applied { .. } | CommandResult::PreconditionFailed { .. } => Ok(()),
        CommandResult::Nothing | CommandResult::Batch(_) => {
            Err(NodeError::Raft("token write returned nothing".into()))
        }
    }
}

/// Checks `token` against the store; returns its record when valid for `usage`.
pub async fn verify_token(
    node: &Node,
    token: &JoinToken,
    usage: &str,
) -> Result<TokenRecord, Status> {
    node.read_barrier()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (kv, _) = node
        .sm
        .get(&token.store_key())
        .map_err(|e| Status::internal(e.to_string()))?;
    let denied = || {
        Status::unauthenticated(
            "join token not valid for this cluster (unknown, revoked or mistyped)",
        )
    };
    let kv = kv.ok_or_else(denied)?;
    let record: TokenRecord =
        serde_json::from_str(&kv.value).map_err(|e| Status::internal(e.to_string()))?;
    if record.secret_sha256 != token.secret_hash() {
        return Err(denied());
    }
    if let Some(exp) = &record.expires_at
        && chrono::DateTime::parse_from_rfc3339(exp).is_ok_and(|t| t < chrono::Utc::now())
    {
        return Err(Status::unauthenticated(format!(
            "join token {} expired at {exp}",
            token.id
        )));
    }
    if !record.usages.iter().any(|u| u == usage) {
        return Err(Status::permission_denied(format!(
            "this token cannot be used to join as a {usage}"
        )));
    }
    Ok(record)
}

/// The `Bootstrap` gRPC service.
pub struct BootstrapService {
    pub node: Arc<Node>,
    pub pki: Arc<Pki>,
    /// The key-encryption key, shared with joining members (see `encryption`).
    pub kek_hex: String,
}

impl BootstrapService {
    /// A token that is well formed, for this cluster's CA, known, unexpired and valid for `usage`.
    async fn check_token(&self, token: &str, usage: &str) -> Result<JoinToken, Status> {
        let token = JoinToken::parse(token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ours = self
            .pki
            .ca_hash()
            .map_err(|e| Status::internal(e.to_string()))?;
        if token.ca_hash != ours {
            return Err(Status::unauthenticated(
                "join token is for a different cluster CA",
            ));
        }
        verify_token(&self.node, &token, usage).await?;
        Ok(token)
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn join_node(
        &self,
        req: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeResponse>, Status> {
        let req = req.into_inner();
        let token = self.check_token(&req.token, "node").await?;
        if let Some(e) = ferry_api::validation::dns1123_subdomain_error(&req.node_name) {
            return Err(Status::invalid_argument(format!(
                "node_name: Invalid value {:?}: {e}",
                req.node_name
            )));
        }
        if req.node_name == pki::SERVER_NAME {
            return Err(Status::invalid_argument(format!(
                "node_name: Invalid value {:?}: reserved for the API server",
                req.node_name
            )));
        }
        // The agent serves logs and exec to members under its node name.
        let subject = pki::Subject {
            common_name: format!("{}{}", pki::NODE_USER_PREFIX, req.node_name),
            organizations: vec![pki::GROUP_NODES.into()],
            serve_hosts: vec![req.node_name.clone()],
        };
        let cert_pem = self
            .pki
            .sign_csr(&req.csr_pem, &subject)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(node = %req.node_name, token = %token.id, "issued node certificate");
        Ok(Response::new(JoinNodeResponse {
            cert_pem,
            ca_pem: self.pki.ca_pem().to_string(),
        }))
    }

    async fn join_member(
        &self,
        req: Request<JoinMemberRequest>,
    ) -> Result<Response<JoinMemberResponse>, Status> {
        let req = req.into_inner();
        let token = self.check_token(&req.token, "member").await?;
        if req.advertise.is_empty() || !req.advertise.contains(':') {
            return Err(Status::invalid_argument(
                "advertise: required, as host:port",
            ));
        }
        let id = self
            .node
            .allocate_member_id()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let cert_pem = self
            .pki
            .sign_csr(&req.csr_pem, &pki::member_subject(id, &req.advertise))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(id, advertise = %req.advertise, token = %token.id, "issued member certificate");
        Ok(Response::new(JoinMemberResponse {
            id,
            cert_pem,
            ca_pem: self.pki.ca_pem().to_string(),
            ca_key_pem: self.pki.ca_key_pem().to_string(),
            kek_hex: self.kek_hex.clone(),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error(
        "{addr} did not present a CA matching the token (expected sha256 {expected}); is the token for this cluster?"
    )]
    CaMismatch { addr: String, expected: String },
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("join refused by {addr}: {message}")]
    Refused { addr: String, message: String },
}

/// The CA certificate `addr` presents in its TLS chain, if its hash is `expected_hash`.
pub async fn fetch_pinned_ca(addr: &str, expected_hash: &str) -> Result<String, JoinError> {
    ferry_api::join::fetch_pinned_ca(addr, expected_hash)
        .await
        .map_err(|e| match e {
            ferry_api::join::JoinError::CaMismatch { addr, expected } => {
                JoinError::CaMismatch { addr, expected }
            }
            other => JoinError::Connect {
                addr: addr.to_string(),
                message: other.to_string(),
            },
        })
}

/// What a successful member join yields.
pub struct Joined {
    pub id: u64,
    pub kek_hex: String,
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Joins the cluster behind `through` as a member that will serve at `advertise`.
pub async fn join_member(
    through: &str,
    token: &JoinToken,
    advertise: &str,
) -> Result<Joined, JoinError> {
    let ca_pem = fetch_pinned_ca(through, &token.ca_hash).await?;
    let (csr_pem, key_pem) = pki::new_csr(&format!("member-at-{advertise}"))?;
    let channel = ferry_api::join::bootstrap_channel(through, &ca_pem)
        .await
        .map_err(|e| JoinError::Connect {
            addr: through.to_string(),
            message: e.to_string(),
        })?;
    let resp = BootstrapClient::new(channel)
        .join_member(JoinMemberRequest {
            token: token.to_string(),
            csr_pem,
            advertise: advertise.to_string(),
        })
        .await
        .map_err(|s| JoinError::Refused {
            addr: through.to_string(),
            message: s.message().to_string(),
        })?
        .into_inner();
    Ok(Joined {
        id: resp.id,
        kek_hex: resp.kek_hex,
        ca_pem: resp.ca_pem,
        ca_key_pem: resp.ca_key_pem,
        cert_pem: resp.cert_pem,
        key_pem,
    })
}
