//! Authentication at the gRPC boundary: every request but a bootstrap join must come over TLS
//! and carry either a client certificate from the cluster CA (rustls verifies the chain during
//! the handshake; a certificate from another CA never gets this far), whose CN and O become the
//! caller's [`UserInfo`], or a bearer token from the static token file (`--token-auth-file`, in
//! Kubernetes' `token,user,uid,"group1,group2"` CSV format). The user goes into the request
//! extensions for authorization.
//!
//! Authorization today: members-only for raft traffic, any authenticated user for the resource
//! API. RBAC (Role/ClusterRole bindings) and the node authorizer are the next security slice.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// Users known by bearer token.
#[derive(Clone, Default)]
pub struct StaticTokens {
    users: Arc<HashMap<String, UserInfo>>,
}

/// Splits one CSV line, honouring double quotes (Kubernetes' token file format).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("at least one field").push(c),
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

impl StaticTokens {
    /// Parses a token file: `token,user,uid[,"group1,group2"]` per line; `#` comments.
    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"group1,group2\"]",
                    i + 1
                ));
            }
            let groups = f.get(3).map_or_else(Vec::new, |g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            });
            if users
                .insert(
                    f[0].clone(),
                    UserInfo {
                        name: f[1].clone(),
                        groups,
                    },
                )
                .is_some()
            {
                return Err(format!("line {}: duplicate token", i + 1));
            }
        }
        Ok(StaticTokens {
            users: Arc::new(users),
        })
    }

    pub fn load(path: &Path) -> Result<StaticTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn user<T>(&self, req: &Request<T>) -> Option<Result<UserInfo, Status>> {
        let header = req.metadata().get("authorization")?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        Some(match token.and_then(|t| self.users.get(t)) {
            Some(u) => Ok(u.clone()),
            None => Err(Status::unauthenticated("invalid bearer token")),
        })
    }
}

/// Any authenticated user: certificate first, then bearer token (a ServiceAccount token, or
/// one from the static token file).
#[derive(Clone, Default)]
pub struct Authenticator {
    pub tokens: StaticTokens,
    /// Verifies ServiceAccount tokens (JWTs); set once the member's store runs.
    pub service_accounts: Option<crate::serviceaccount::Authenticator>,
}

impl Authenticator {
    /// The user of the request's bearer token, if it has one: a token shaped like a JWT is
    /// tried as a ServiceAccount token first; the static token file decides otherwise (and when
    /// it knows the token), as Kubernetes' union of token authenticators does.
    fn bearer<T>(&self, req: &Request<T>) -> Option<Result<UserInfo, Status>> {
        let r#static = self.tokens.user(req);
        if let Some(sa) = &self.service_accounts
            && let Some(token) = req
                .metadata()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| t.matches('.').count() == 2)
        {
            return Some(match (sa.authenticate(token), r#static) {
                (Ok(user), _) | (Err(_), Some(Ok(user))) => Ok(user),
                (Err(e), _) => Err(Status::unauthenticated(e)),
            });
        }
        r#static
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let user = match peer_user(&req) {
            Ok(u) => u,
            Err(no_cert) => match self.bearer(&req) {
                Some(r) => r?,
                None => return Err(no_cert),
            },
        };
        req.extensions_mut().insert(user);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_like_kubernetes() {
        let t = StaticTokens::parse("# comment\nabc123,alice,1001,\"dev,ops\"\nxyz,bob,1002\n")
            .expect("parses");
        assert_eq!(
            t.users["abc123"],
            UserInfo {
                name: "alice".into(),
                groups: vec!["dev".into(), "ops".into()]
            }
        );
        assert!(t.users["xyz"].groups.is_empty());
        assert!(StaticTokens::parse("onlytoken").is_err());
        assert!(
            StaticTokens::parse("a,u,1\na,v,2").is_err(),
            "duplicate tokens are refused"
        );
    }
}
