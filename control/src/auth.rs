//! Authentication at the gRPC boundary: every request but a bootstrap join must come over mutual
//! TLS with a certificate from the cluster CA (rustls verifies the chain during the handshake; a
//! certificate from another CA never gets this far). The certificate's CN and O become the
//! caller's [`UserInfo`], placed in the request extensions for authorization.
//!
//! Authorization today: members-only for raft traffic, any authenticated user for the resource
//! API. RBAC (Role/ClusterRole bindings) and the node authorizer are the next security slice.

use tonic::{Request, Status};

use crate::pki::{GROUP_MEMBERS, UserInfo, user_from_cert};

fn peer_user<T>(req: &Request<T>) -> Result<UserInfo, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "client certificate required: use the admin config the first `ferry server` wrote \
             (<data-dir>/admin.yaml, also ~/.ferry/config) or a certificate from the cluster CA",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    user_from_cert(leaf.as_ref()).ok_or_else(|| {
        Status::unauthenticated("client certificate has no common name to use as a user name")
    })
}

/// Any authenticated user.
pub fn authenticated(mut req: Request<()>) -> Result<Request<()>, Status> {
    let user = peer_user(&req)?;
    req.extensions_mut().insert(user);
    Ok(req)
}

/// Control-plane members only.
pub fn members_only(mut req: Request<()>) -> Result<Request<()>, Status> {
    let user = peer_user(&req)?;
    if !user.in_group(GROUP_MEMBERS) {
        return Err(Status::permission_denied(format!(
            "user {:?} may not send raft traffic: only control-plane members (group {GROUP_MEMBERS}) can",
            user.name
        )));
    }
    req.extensions_mut().insert(user);
    Ok(req)
}
