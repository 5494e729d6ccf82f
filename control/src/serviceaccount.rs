//! ServiceAccount tokens, as Kubernetes' bound service account tokens (TokenRequest): signed
//! JWTs naming a ServiceAccount (and optionally the pod they are bound to), valid for an
//! audience until an expiry, and only while that ServiceAccount (and pod) still exists with the
//! uid the token names.
//!
//! Tokens are HS256-signed with a key every member derives from the cluster CA's private key
//! (HKDF-SHA256, its own label), so any member verifies any member's tokens and nothing new has
//! to be distributed or stored; rotating the CA rotates the key. Only Ferry's API servers verify
//! them (there is no OIDC discovery). A verified token is the user
//! `system:serviceaccount:<namespace>:<name>` in the groups `system:serviceaccounts`,
//! `system:serviceaccounts:<namespace>` and `system:authenticated`, which RBAC bindings name as
//! a `ServiceAccount` subject.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::node::Node;
use crate::pki::UserInfo;

/// The audience of tokens for Ferry's own API (Kubernetes' default API audience is the
/// issuer URL; a token requested for another audience is not accepted here).
pub const API_AUDIENCE: &str = "ferry";
/// The `iss` of every token.
pub const ISSUER: &str = "ferry";
/// Shortest and default lifetimes, as Kubernetes' TokenRequest.
pub const MIN_EXPIRATION_S: i64 = 600;
pub const DEFAULT_EXPIRATION_S: i64 = 3600;
/// Longest lifetime (Kubernetes: `--service-account-max-token-expiration`).
pub const MAX_EXPIRATION_S: i64 = 48 * 3600;
pub const GROUP_ALL: &str = "system:serviceaccounts";
const USER_PREFIX: &str = "system:serviceaccount:";
const HKDF_INFO: &[u8] = b"ferry service account tokens v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The private claims under `kubernetes.io`, as Kubernetes writes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bound {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Bound,
}

/// Issues and verifies the cluster's ServiceAccount tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
}

/// The signing key derived from the cluster CA's private key.
fn derive_key(ca_key_pem: &str) -> [u8; 32] {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"ferry");
    let prk = salt.extract(ca_key_pem.as_bytes());
    let mut key = [0u8; 32];
    // Infallible for a 32-byte output of HKDF-SHA256 (at most 255 × 32 bytes).
    if let Ok(okm) = prk.expand(&[HKDF_INFO], Len) {
        let _ = okm.fill(&mut key);
    }
    key
}

/// The user a token's subject is.
pub fn user_of(namespace: &str, name: &str) -> UserInfo {
    UserInfo {
        name: format!("{USER_PREFIX}{namespace}:{name}"),
        groups: vec![
            GROUP_ALL.to_string(),
            format!("{GROUP_ALL}:{namespace}"),
            crate::rbac::GROUP_AUTHENTICATED.to_string(),
        ],
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

impl Tokens {
    pub fn new(ca_key_pem: &str) -> Tokens {
        let key = derive_key(ca_key_pem);
        Tokens {
            encoding: Arc::new(EncodingKey::from_secret(&key)),
            decoding: Arc::new(DecodingKey::from_secret(&key)),
        }
    }

    /// A token for ServiceAccount `sa` (an object), for `audiences` (default: the API's), that
    /// expires `expiration_s` after `now`, bound to `pod` if given; and its expiry.
    pub fn issue(
        &self,
        sa: &Value,
        audiences: &[String],
        expiration_s: i64,
        pod: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), String> {
        let namespace = s(sa, "/metadata/namespace");
        let name = s(sa, "/metadata/name");
        let exp = now + chrono::Duration::seconds(expiration_s);
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: format!("{USER_PREFIX}{namespace}:{name}"),
            aud: if audiences.is_empty() {
                vec![API_AUDIENCE.to_string()]
            } else {
                audiences.to_vec()
            },
            exp: exp.timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: Bound {
                namespace: namespace.to_string(),
                serviceaccount: Ref {
                    name: name.to_string(),
                    uid: s(sa, "/metadata/uid").to_string(),
                },
                pod: pod.map(|p| Ref {
                    name: s(p, "/metadata/name").to_string(),
                    uid: s(p, "/metadata/uid").to_string(),
                }),
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("signing the token: {e}"))?;
        Ok((token, exp))
    }

    /// The claims of a token signed by this cluster, for the API's audience, not expired
    /// (Kubernetes allows no leeway either).
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&[API_AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    "the token is not for this API (audience)"
                }
                _ => "invalid bearer token",
            }
            .to_string()
        })?;
        let c = data.claims;
        if c.sub
            != format!(
                "{USER_PREFIX}{}:{}",
                c.kubernetes.namespace, c.kubernetes.serviceaccount.name
            )
        {
            return Err("invalid bearer token".into());
        }
        Ok(c)
    }
}

/// Token authentication against this member's store: the signature, audience and expiry, then
/// the ServiceAccount (and the bound pod) must still exist with the uid the token names.
#[derive(Clone)]
pub struct Authenticator {
    pub tokens: Tokens,
    pub node: Arc<Node>,
}

impl Authenticator {
    fn live(&self, key: &str, uid: &str) -> bool {
        match self.node.sm.get(key) {
            Ok((Some(kv), _)) => serde_json::from_str::<Value>(&kv.value).is_ok_and(|o| {
                s(&o, "/metadata/uid") == uid && s(&o, "/metadata/deletionTimestamp").is_empty()
            }),
            _ => false,
        }
    }

    pub fn authenticate(&self, token: &str) -> Result<UserInfo, String> {
        let c = self.tokens.verify(token)?;
        let ns = &c.kubernetes.namespace;
        let sa = &c.kubernetes.serviceaccount;
        if !self.live(&format!("/serviceaccounts/{ns}/{}", sa.name), &sa.uid) {
            return Err(format!(
                "the token's service account {ns}/{} no longer exists",
                sa.name
            ));
        }
        if let Some(pod) = &c.kubernetes.pod
            && !self.live(&format!("/pods/{ns}/{}", pod.name), &pod.uid)
        {
            return Err(format!(
                "the token's pod {ns}/{} no longer exists",
                pod.name
            ));
        }
        Ok(user_of(ns, &sa.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Value {
        serde_json::json!({"metadata": {"name": "robot", "namespace": "apps", "uid": "sa-uid"}})
    }

    #[test]
    fn tokens_verify_only_for_this_cluster_this_audience_and_in_time() {
        let t = Tokens::new("ca key one");
        let now = Utc::now();
        let (token, exp) = t.issue(&sa(), &[], 3600, None, now).unwrap();
        assert_eq!((exp - now).num_seconds(), 3600);
        let c = t.verify(&token).unwrap();
        assert_eq!(c.sub, "system:serviceaccount:apps:robot");
        assert_eq!(c.kubernetes.serviceaccount.uid, "sa-uid");
        assert_eq!(c.aud, vec![API_AUDIENCE.to_string()]);
        // Another cluster's key, a tampered payload, another audience, an expired token.
        assert!(Tokens::new("ca key two").verify(&token).is_err());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = parts[1].replace('a', "b");
        assert!(t.verify(&parts.join(".")).is_err());
        let (vault, _) = t.issue(&sa(), &["vault".into()], 3600, None, now).unwrap();
        assert_eq!(
            t.verify(&vault).unwrap_err(),
            "the token is not for this API (audience)"
        );
        let (old, _) = t
            .issue(&sa(), &[], 600, None, now - chrono::Duration::seconds(700))
            .unwrap();
        assert_eq!(t.verify(&old).unwrap_err(), "the token has expired");
        assert!(t.verify("not.a.token").is_err());
    }

    #[test]
    fn a_bound_token_names_its_pod_and_the_user_its_groups() {
        let t = Tokens::new("k");
        let pod = serde_json::json!({"metadata": {"name": "web-1", "uid": "pod-uid"}});
        let (token, _) = t.issue(&sa(), &[], 3600, Some(&pod), Utc::now()).unwrap();
        let c = t.verify(&token).unwrap();
        assert_eq!(
            c.kubernetes.pod,
            Some(Ref {
                name: "web-1".into(),
                uid: "pod-uid".into()
            })
        );
        let u = user_of("apps", "robot");
        assert_eq!(u.name, "system:serviceaccount:apps:robot");
        assert!(u.in_group("system:serviceaccounts:apps"));
        assert!(u.in_group("system:authenticated"));
    }
}
