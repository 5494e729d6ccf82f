//! The durable raft log on redb.
//!
//! Owns the log entries, the vote and the committed log id, in their own redb file (`raft-log.redb`)
//! so that log fsyncs never wait behind state-machine writes. Invariants openraft relies on:
//! - the vote is durable before `save_vote` returns;
//! - appended entries are durable before the flush callback fires (we fsync, then call it);
//! - `truncate` removes every entry at or after the given index, durably;
//! - `purge` records the last purged id before deleting, so `get_log_state` never goes backwards.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The raft log. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_logs(AnyError::new(&e))))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tx = db.begin_read().map_err(io_read)?;
        let table = tx.open_table(META).map_err(io_read)?;
        match table.get(key).map_err(io_read)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_read)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(
        db: &Database,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(io_write)?;
        let mut tx = db.begin_write().map_err(io_write)?;
        tx.set_durability(durability).map_err(io_write)?;
        tx.open_table(META)
            .map_err(io_write)?
            .insert(key, bytes.as_slice())
            .map_err(io_write)?;
        tx.commit().map_err(io_write)
    }

    fn read_range(
        db: &Database,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let tx = db.begin_read().map_err(io_read)?;
        let table = tx.open_table(LOGS).map_err(io_read)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end)).map_err(io_read)? {
            let (_, v) = item.map_err(io_read)?;
            out.push(serde_json::from_slice(v.value()).map_err(io_read)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.blocking(move |db| Self::read_range(db, start, end))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(|db| {
            let last_purged: Option<LogId> = Self::read_meta(db, KEY_LAST_PURGED)?;
            let tx = db.begin_read().map_err(io_read)?;
            let table = tx.open_table(LOGS).map_err(io_read)?;
            let last = match table.last().map_err(io_read)? {
                Some((_, v)) => Some(
                    serde_json::from_slice::<Entry>(v.value())
                        .map_err(io_read)?
                        .log_id,
                ),
                None => None,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |db| {
            Self::write_meta(db, KEY_VOTE, &vote, Durability::Immediate).map_err(|_| {
                StorageIOError::write_vote(AnyError::error("failed to persist vote")).into()
            })
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.blocking(|db| Self::read_meta(db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only an optimisation for restart (re-apply without waiting for a leader): no fsync.
        self.blocking(move |db| Self::write_meta(db, KEY_COMMITTED, &committed, Durability::None))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(|db| Ok(Self::read_meta::<Option<LogId>>(db, KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, serde_json::to_vec(&e).map_err(io_write)?));
        }
        let res = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(io_write)?;
                {
                    let mut table = tx.open_table(LOGS).map_err(io_write)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice()).map_err(io_write)?;
                    }
                }
                tx.commit().map_err(io_write)
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(io_write)?;
            tx.open_table(LOGS)
                .map_err(io_write)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(io_write)?;
            tx.commit().map_err(io_write)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_write)?;
            let mut tx = db.begin_write().map_err(io_write)?;
            // Purged entries are already covered by a durable snapshot; losing this commit in a
            // crash only means purging again.
            tx.set_durability(Durability::None).map_err(io_write)?;
            tx.open_table(META)
                .map_err(io_write)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())
                .map_err(io_write)?;
            tx.open_table(LOGS)
                .map_err(io_write)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(io_write)?;
            tx.commit().map_err(io_write)
        })
        .await
    }
}
