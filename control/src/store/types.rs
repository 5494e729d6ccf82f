//! The replicated command set and its results: what goes into the raft log and what applying it
//! returns. Commands are deterministic so that every member computes the same revisions.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Ferry's raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// What must hold for a mutation to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Always apply.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist (any revision).
    Exists,
    /// The key must exist at exactly this modification revision (compare-and-swap).
    ModRevision(u64),
}

/// One replicated mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: String,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Independent commands proposed together (group commit): each is applied on its own, in
    /// order, with its own revision and result. Never nested.
    Batch(Vec<Command>),
}

/// A stored value with its revisions (etcd's create_revision / mod_revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// The result of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Applied. `kv` is the new value (put) or the deleted value (delete).
    Applied {
        revision: u64,
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// The precondition failed; `current` is what the key holds now.
    PreconditionFailed { current: Option<KeyValue> },
    /// One result per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
    /// Blank and membership entries produce no result of interest.
    #[default]
    Nothing,
}

/// A change in the store's history: what watches deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    /// The new value for a put; the last value for a delete (with mod_revision = the delete's).
    pub kv: KeyValue,
    /// The value before this change, if any.
    pub prev: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// Encoding of values in redb: 8-byte create revision, 8-byte mod revision, then the value bytes.
pub(crate) fn encode_record(create_revision: u64, mod_revision: u64, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

pub(crate) fn decode_record(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    if bytes.len() < 16 {
        return None;
    }
    let create_revision = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
    let mod_revision = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let value = std::str::from_utf8(&bytes[16..]).ok()?.to_string();
    Some(KeyValue {
        key: key.to_string(),
        value,
        create_revision,
        mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let b = encode_record(3, 9, "{\"a\":1}");
        let kv = decode_record("/pods/default/x", &b).expect("decodes");
        assert_eq!(kv.create_revision, 3);
        assert_eq!(kv.mod_revision, 9);
        assert_eq!(kv.value, "{\"a\":1}");
        assert!(decode_record("k", &b[..10]).is_none());
    }
}
