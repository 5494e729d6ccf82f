//! The pod network subsystem's one error type. Every variant says what was being done to which
//! pod, file, namespace or link, so a log line is enough to act on.

use std::{io, path::PathBuf};

/// Errors of [`crate::network`]. Netlink errors are boxed: `rtnetlink::Error` can carry a whole
/// netlink message and would make every `Result` large.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid pod CIDR `{input}`: {reason}")]
    InvalidCidr { input: String, reason: &'static str },

    #[error("invalid {what} `{value}`: {reason}")]
    InvalidInput {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("pod CIDR {cidr} has no free address left ({in_use} in use)")]
    Exhausted { cidr: String, in_use: usize },

    #[error(
        "IPAM state {path} is for pod CIDR {stored}, but this node's pod CIDR is {configured}; \
         refusing to guess which addresses are live (remove the file only once no pod of this \
         node is running)"
    )]
    CidrMismatch {
        path: PathBuf,
        stored: String,
        configured: String,
    },

    #[error("IPAM state {path} is invalid: {reason}")]
    StateInvalid { path: PathBuf, reason: String },

    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("network namespace {path}: {op}")]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("netlink: {op}")]
    Netlink {
        op: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("link `{name}` exists but is a {found}, not a {expected}")]
    LinkKind {
        name: String,
        expected: &'static str,
        found: String,
    },

    #[error("helper thread for {op}: {reason}")]
    Thread { op: &'static str, reason: String },
}

pub(crate) type Result<T, E = NetworkError> = std::result::Result<T, E>;

impl NetworkError {
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            op: op.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        NetworkError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
