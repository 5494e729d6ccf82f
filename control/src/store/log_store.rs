//! The durable raft log on redb, with group commit.
//!
//! Owns the log entries, the vote and the committed log id, in their own redb file
//! (`raft-log.redb`) so that log fsyncs never wait behind state-machine writes.
//!
//! Appends return as soon as the entries are in memory (`pending`) and readable; one writer
//! thread drains every queued append into a single redb transaction and fsync, then fires the
//! flush callbacks in order. Under concurrent load that turns N fsyncs into one. An append whose
//! caller waits for the flush anyway (a follower's: it acknowledges only durable entries) is
//! written on the caller's thread when the writer has nothing queued, saving the hand-off to the
//! writer and the wake-up back on every replicated write. Invariants openraft relies on:
//! - appended entries are readable when `append` returns (readers overlay `pending` on disk);
//! - the flush callback fires only after the entries are durable;
//! - the vote is durable before `save_vote` returns;
//! - operations reach the disk in the order they were issued (one FIFO queue, one writer), so a
//!   truncate queued after an append always wins over it, and an append after a truncate wins over
//!   the truncate.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";

/// Flushed entries kept in memory for replication reads (unflushed ones are always kept).
const CACHE_ENTRIES: usize = 8192;

/// Most queued operations folded into one transaction.
const MAX_BATCH: usize = 4096;

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

type Done = oneshot::Sender<Result<(), StorageError>>;

enum Job {
    /// Flush these (index, log id) entries from `pending`, then call back.
    Append {
        ids: Vec<LogId>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        durable: bool,
        done: Done,
    },
}

struct Shared {
    db: Database,
    /// Appended but not yet durable, readable by log readers.
    /// Also keeps the most recent flushed entries (a contiguous suffix of the log), so that
    /// replication reads of recent entries never touch the disk.
    pending: Mutex<BTreeMap<u64, Entry>>,
    /// Highest index known durable; entries above it are never evicted from `pending`.
    flushed_upto: std::sync::atomic::AtomicU64,
    /// Jobs sent to the writer and not yet done. Only raft's core submits work (appends,
    /// truncates, purges, votes), one call at a time, so at zero the writer is idle and stays
    /// idle while the core writes inline.
    queued: std::sync::atomic::AtomicUsize,
}

/// The raft log. Cheap to clone: clones share the database, the pending entries and the writer.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl LogStore {
    /// Opens (or creates) the log at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        let shared = Arc::new(Shared {
            db,
            pending: Mutex::new(BTreeMap::new()),
            flushed_upto: std::sync::atomic::AtomicU64::new(0),
            queued: std::sync::atomic::AtomicUsize::new(0),
        });
        let (jobs, rx) = std::sync::mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(&writer, rx))
            .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        Ok(Self { shared, jobs })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` for the writer thread.
    fn send(&self, job: Job) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            io_write(std::io::Error::other("raft log writer stopped"))
        })
    }

    async fn submit(&self, make: impl FnOnce(Done) -> Job) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await
            .map_err(|_| io_write(std::io::Error::other("raft log writer stopped")))?
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.db))
            .await
            .map_err(io_read)?
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

    fn read_range(
        db: &Database,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<BTreeMap<u64, Entry>, StorageError> {
        let tx = db.begin_read().map_err(io_read)?;
        let table = tx.open_table(LOGS).map_err(io_read)?;
        let mut out = BTreeMap::new();
        for item in table.range::<u64>((start, end)).map_err(io_read)? {
            let (k, v) = item.map_err(io_read)?;
            out.insert(k.value(), postcard::from_bytes(v.value()).map_err(io_read)?);
        }
        Ok(out)
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let value = serde_json::to_vec(value).map_err(io_write)?;
        self.submit(|done| Job::Meta {
            key,
            value,
            durable,
            done,
        })
        .await
    }
}

/// Applies queued jobs in order, folding runs of appends into one durable transaction.
fn writer_loop(shared: &Shared, rx: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut appends: Vec<(Vec<LogId>, LogFlushed<TypeConfig>)> = Vec::new();
        for job in batch {
            match job {
                Job::Append { ids, callback } => appends.push((ids, callback)),
                other => {
                    flush_appends(shared, std::mem::take(&mut appends), true);
                    run_job(shared, other);
                }
            }
        }
        flush_appends(shared, appends, true);
    }
}

/// Writes `appends` in one durable transaction and fires their callbacks; `queued`: they were
/// writer jobs (done once written), not an append written on its caller's thread.
fn flush_appends(
    shared: &Shared,
    appends: Vec<(Vec<LogId>, LogFlushed<TypeConfig>)>,
    queued: bool,
) {
    if appends.is_empty() {
        return;
    }
    let result = (|| -> Result<Vec<LogId>, StorageError> {
        let mut encoded = Vec::new();
        {
            let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (ids, _) in &appends {
                for id in ids {
                    // An entry truncated (and maybe replaced) since it was queued is not ours to write.
                    if let Some(e) = pending.get(&id.index).filter(|e| e.log_id == *id) {
                        encoded.push((id.index, postcard::to_stdvec(e).map_err(io_write)?));
                    }
                }
            }
        }
        let tx = shared.db.begin_write().map_err(io_write)?;
        {
            let mut table = tx.open_table(LOGS).map_err(io_write)?;
            for (index, bytes) in &encoded {
                table.insert(*index, bytes.as_slice()).map_err(io_write)?;
            }
        }
        tx.commit().map_err(io_write)?;
        Ok(appends
            .iter()
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect())
    })();
    use std::sync::atomic::Ordering;
    // Written (or failed) before any callback fires: a caller woken by one sees the writer idle.
    if queued {
        shared.queued.fetch_sub(appends.len(), Ordering::SeqCst);
    }
    match result {
        Ok(written) => {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            let top = written
                .iter()
                .filter(|id| pending.get(&id.index).is_some_and(|e| e.log_id == **id))
                .map(|id| id.index)
                .max();
            if let Some(top) = top {
                shared.flushed_upto.fetch_max(top, Ordering::SeqCst);
            }
            let flushed = shared.flushed_upto.load(Ordering::SeqCst);
            while pending.len() > CACHE_ENTRIES {
                match pending.first_key_value() {
                    Some((&first, _)) if first <= flushed => {
                        pending.remove(&first);
                    }
                    _ => break,
                }
            }
            drop(pending);
            for (_, cb) in appends {
                cb.log_io_completed(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!("raft log append failed: {e}");
            for (_, cb) in appends {
                cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
            }
        }
    }
}

fn run_job(shared: &Shared, job: Job) {
    let db = &shared.db;
    let (result, done) = match job {
        Job::Append { .. } => unreachable!("appends are flushed in batches"),
        Job::Truncate { from, done } => {
            let r = (|| {
                let tx = db.begin_write().map_err(io_write)?;
                tx.open_table(LOGS)
                    .map_err(io_write)?
                    .retain_in(from.., |_, _| false)
                    .map_err(io_write)?;
                tx.commit().map_err(io_write)
            })();
            (r, done)
        }
        Job::Purge { upto, done } => {
            let r = (|| {
                let bytes = serde_json::to_vec(&Some(upto)).map_err(io_write)?;
                let mut tx = db.begin_write().map_err(io_write)?;
                // Purged entries are covered by a durable snapshot; losing this commit in a
                // crash only means purging again.
                tx.set_durability(Durability::None).map_err(io_write)?;
                tx.open_table(META)
                    .map_err(io_write)?
                    .insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(io_write)?;
                tx.open_table(LOGS)
                    .map_err(io_write)?
                    .retain_in(..=upto.index, |_, _| false)
                    .map_err(io_write)?;
                tx.commit().map_err(io_write)
            })();
            (r, done)
        }
        Job::Meta {
            key,
            value,
            durable,
            done,
        } => {
            let r = (|| {
                let mut tx = db.begin_write().map_err(io_write)?;
                tx.set_durability(if durable {
                    Durability::Immediate
                } else {
                    Durability::None
                })
                .map_err(io_write)?;
                tx.open_table(META)
                    .map_err(io_write)?
                    .insert(key, value.as_slice())
                    .map_err(io_write)?;
                tx.commit().map_err(io_write)
            })();
            (r, done)
        }
    };
    shared
        .queued
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    let _ = done.send(result);
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        // `pending` holds a contiguous suffix of the log: a read that starts inside it is served
        // from memory alone.
        let first_wanted = match start {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        {
            let pending = self.pending();
            if let Some((&first, _)) = pending.first_key_value()
                && first_wanted >= first
            {
                return Ok(pending
                    .range((start, end))
                    .map(|(_, v)| v.clone())
                    .collect());
            }
        }
        // Snapshot pending first: an entry leaves `pending` only after it is on disk, so anything
        // missing from this copy is found by the disk read that follows.
        let overlay: Vec<(u64, Entry)> = self
            .pending()
            .range((start, end))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut entries = self
            .blocking(move |db| Self::read_range(db, start, end))
            .await?;
        for (k, v) in overlay {
            entries.insert(k, v);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let pending_last = self.pending().last_key_value().map(|(_, e)| e.log_id);
        let (last_purged, disk_last) = self
            .blocking(|db| {
                let last_purged: Option<LogId> =
                    Self::read_meta::<Option<LogId>>(db, KEY_LAST_PURGED)?.flatten();
                let tx = db.begin_read().map_err(io_read)?;
                let table = tx.open_table(LOGS).map_err(io_read)?;
                let last = match table.last().map_err(io_read)? {
                    Some((_, v)) => Some(
                        postcard::from_bytes::<Entry>(v.value())
                            .map_err(io_read)?
                            .log_id,
                    ),
                    None => None,
                };
                Ok((last_purged, last))
            })
            .await?;
        let last = pending_last.max(disk_last).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, true)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.blocking(|db| Self::read_meta(db, KEY_VOTE)).await
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
        let mut ids = Vec::new();
        {
            let mut pending = self.pending();
            for e in entries {
                ids.push(e.log_id);
                pending.insert(e.log_id.index, e);
            }
        }
        if callback.caller_waits()
            && self.shared.queued.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            // Nothing queued before it, and the caller blocks on this flush either way.
            flush_appends(&self.shared, vec![(ids, callback)], false);
            return Ok(());
        }
        self.send(Job::Append { ids, callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending().retain(|k, _| *k < log_id.index);
        self.shared.flushed_upto.fetch_min(
            log_id.index.saturating_sub(1),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.submit(|done| Job::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending().retain(|k, _| *k > log_id.index);
        self.submit(|done| Job::Purge { upto: log_id, done }).await
    }
}
