//! The durable raft log on redb, with group commit and a redo journal.
//!
//! Owns the log entries and the vote, in their own redb file (`raft-log.redb`) so that log
//! fsyncs never wait behind state-machine writes.
//!
//! Appends return as soon as the entries are in memory (`pending`) and readable; one writer
//! thread drains every queued append into a single redb transaction, then fires the flush
//! callbacks in order. Under concurrent load that turns N fsyncs into one. An append whose
//! caller waits for the flush anyway (a follower's: it acknowledges only durable entries) is
//! written on the caller's thread when the writer has nothing queued, saving the hand-off to the
//! writer and the wake-up back on every replicated write.
//!
//! Every operation (append, truncate, purge, vote) is committed to redb without an fsync and
//! made durable by one record in the redo journal (`raft-log.journal`, see [`super::journal`]):
//! one 4 KiB direct, synchronous write instead of a durable redb commit's ~30 KiB of scattered
//! page writes and its `fdatasync`. Every `CHECKPOINT_RECORDS` records redb is committed durably and the
//! journal starts over; on open the journal's records are replayed into redb. Replay is
//! idempotent (inserts, range removals and the vote, each overwriting), so replaying records
//! that redb already holds is harmless. Invariants openraft relies on:
//! - appended entries are readable when `append` returns (readers overlay `pending` on disk);
//! - the flush callback fires only after the entries are durable;
//! - the vote is durable before `save_vote` returns;
//! - operations reach the disk in the order they were issued (one FIFO queue, one writer, one
//!   journal), so a truncate queued after an append always wins over it, and an append after a
//!   truncate wins over the truncate, in redb as in the journal's replay.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

use super::journal::Journal;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";

/// Journal records after which redb is committed durably and the journal starts a new epoch:
/// one durable commit and one superblock write per this many operations.
const CHECKPOINT_RECORDS: u64 = 512;

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
    /// Any other operation: commit it, then answer.
    Op { op: Op, done: Done },
}

/// One log operation: committed to redb without an fsync, made durable as one journal record,
/// and replayed from the journal on open.
#[derive(serde::Serialize, serde::Deserialize)]
enum Op {
    /// (index, postcard-encoded entry)
    Append(Vec<(u64, Vec<u8>)>),
    /// Removes the entries from this index on.
    Truncate(u64),
    /// Removes the entries up to `index` and records `last_purged` (JSON).
    Purge { index: u64, last_purged: Vec<u8> },
    /// The vote (JSON).
    Vote(Vec<u8>),
}

fn apply_op(tx: &WriteTransaction, op: &Op) -> Result<(), redb::Error> {
    match op {
        Op::Append(entries) => {
            let mut table = tx.open_table(LOGS)?;
            for (index, bytes) in entries {
                table.insert(*index, bytes.as_slice())?;
            }
        }
        Op::Truncate(from) => {
            tx.open_table(LOGS)?.retain_in(*from.., |_, _| false)?;
        }
        Op::Purge { index, last_purged } => {
            tx.open_table(META)?
                .insert(KEY_LAST_PURGED, last_purged.as_slice())?;
            tx.open_table(LOGS)?.retain_in(..=*index, |_, _| false)?;
        }
        Op::Vote(vote) => {
            tx.open_table(META)?.insert(KEY_VOTE, vote.as_slice())?;
        }
    }
    Ok(())
}

/// Commits redb durably, which covers every journal record, and starts a new journal epoch.
/// (A durable commit with no changes of its own still persists every earlier non-durable one.)
fn checkpoint(db: &Database, journal: &mut Journal) -> Result<(), redb::Error> {
    db.begin_write()?.commit()?;
    journal.new_epoch()?;
    Ok(())
}

/// Applies `op` to redb and makes it durable: a commit without fsync and one journal record,
/// or, for an operation too big for the journal, a durable commit.
fn commit_op(shared: &Shared, op: &Op) -> Result<(), StorageError> {
    let record = postcard::to_stdvec(op).map_err(io_write)?;
    let mut journal = shared.journal.lock().unwrap_or_else(|p| p.into_inner());
    if journal.records() >= CHECKPOINT_RECORDS || !journal.fits(record.len()) {
        checkpoint(&shared.db, &mut journal).map_err(io_write)?;
    }
    let journaled = Journal::ever_fits(record.len());
    let mut tx = shared.db.begin_write().map_err(io_write)?;
    if journaled {
        tx.set_durability(Durability::None).map_err(io_write)?;
    }
    apply_op(&tx, op).map_err(io_write)?;
    tx.commit().map_err(io_write)?;
    if journaled {
        journal.append(&record).map_err(io_write)?;
    }
    Ok(())
}

struct Shared {
    db: Database,
    /// Makes the operations committed to `db` without an fsync durable.
    journal: Mutex<Journal>,
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
    /// Opens (or creates) the log at `path`, with its journal next to it, replays the journal
    /// into redb and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let journal_path = path.with_extension("journal");
        let (mut journal, replay) = Journal::open(&journal_path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        for (n, record) in replay.iter().enumerate() {
            let op: Op = postcard::from_bytes(record).map_err(|e| {
                redb::Error::Io(std::io::Error::other(format!(
                    "{}: record {n} of the raft log's journal is unreadable ({e}); restore the \
                     member from its peers (remove it, wipe its data dir, add it again)",
                    journal_path.display()
                )))
            })?;
            apply_op(&tx, &op)?;
        }
        tx.commit()?;
        if !replay.is_empty() {
            tracing::info!(records = replay.len(), "replayed the raft log's journal");
        }
        journal.new_epoch()?;
        let shared = Arc::new(Shared {
            db,
            journal: Mutex::new(journal),
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
                Job::Op { op, done } => {
                    flush_appends(shared, std::mem::take(&mut appends), true);
                    let result = commit_op(shared, &op);
                    shared
                        .queued
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = done.send(result);
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
        commit_op(shared, &Op::Append(encoded))?;
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
        let vote =
            serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.submit(|done| Job::Op {
            op: Op::Vote(vote),
            done,
        })
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
        self.submit(|done| Job::Op {
            op: Op::Truncate(log_id.index),
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending().retain(|k, _| *k > log_id.index);
        let last_purged = serde_json::to_vec(&Some(log_id)).map_err(io_write)?;
        self.submit(|done| Job::Op {
            op: Op::Purge {
                index: log_id.index,
                last_purged,
            },
            done,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn append(store: &LogStore, indexes: std::ops::RangeInclusive<u64>, term: u64) {
        let entries = indexes
            .map(|index| {
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
                    payload: EntryPayload::Blank,
                };
                (index, postcard::to_stdvec(&entry).expect("encode"))
            })
            .collect();
        commit_op(&store.shared, &Op::Append(entries)).expect("append");
    }

    /// The log as a reopened store reads it: (index, term) of every entry, and the vote.
    async fn reopened(dir: &Path) -> (Vec<(u64, u64)>, Option<Vote<NodeId>>) {
        let mut store = LogStore::open(&dir.join("raft-log.redb")).expect("reopen");
        let entries = store.try_get_log_entries(0..).await.expect("read");
        let vote = store.read_vote().await.expect("vote");
        let ids = entries
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect();
        (ids, vote)
    }

    /// A data dir at `image` holding only a copy of the redb file `redb`.
    fn redb_image(redb: &Path, image: &Path) {
        std::fs::create_dir_all(image).expect("mkdir");
        std::fs::copy(redb, image.join("raft-log.redb")).expect("copy redb");
    }

    /// What a crash leaves: redb as of its last durable commit, the journal as written.
    fn crash_image(redb_at_checkpoint: &Path, live: &Path, image: &Path) {
        redb_image(redb_at_checkpoint, image);
        std::fs::copy(
            live.join("raft-log.journal"),
            image.join("raft-log.journal"),
        )
        .expect("copy journal");
    }

    #[tokio::test]
    async fn operations_since_the_last_durable_commit_are_replayed_from_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).expect("mkdir");
        let store = LogStore::open(&live.join("raft-log.redb")).expect("open");
        // Opening committed redb durably: this copy is what a crash from here on leaves of it.
        let durable = dir.path().join("durable.redb");
        std::fs::copy(live.join("raft-log.redb"), &durable).expect("copy");

        append(&store, 1..=10, 1);
        commit_op(&store.shared, &Op::Truncate(8)).expect("truncate");
        append(&store, 8..=9, 2);
        let vote = Vote::new(2, 3);
        commit_op(
            &store.shared,
            &Op::Vote(serde_json::to_vec(&vote).expect("json")),
        )
        .expect("vote");
        let last_purged =
            serde_json::to_vec(&Some(LogId::new(CommittedLeaderId::new(1, 1), 2))).expect("json");
        commit_op(
            &store.shared,
            &Op::Purge {
                index: 2,
                last_purged,
            },
        )
        .expect("purge");

        let image = dir.path().join("image");
        crash_image(&durable, &live, &image);
        let (ids, got_vote) = reopened(&image).await;
        let mut want: Vec<(u64, u64)> = (3..=7).map(|i| (i, 1)).collect();
        want.extend([(8, 2), (9, 2)]);
        assert_eq!(ids, want);
        assert_eq!(got_vote, Some(vote));
        // Replaying made it durable and emptied the journal: a second crash image of the
        // reopened store reads the same.
        let again = dir.path().join("again");
        crash_image(&image.join("raft-log.redb"), &image, &again);
        assert_eq!(reopened(&again).await.0, want);
    }

    #[tokio::test]
    async fn a_full_journal_is_checkpointed_into_redb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(&dir.path().join("raft-log.redb")).expect("open");
        for i in 1..=CHECKPOINT_RECORDS + 10 {
            append(&store, i..=i, 1);
        }
        let records = store
            .shared
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .records();
        assert_eq!(records, 10, "a checkpoint starts the journal over");
        // redb alone, without the journal: the checkpoint (a durable commit with no changes of
        // its own) made the first CHECKPOINT_RECORDS appends durable; the 10 after it are only
        // in the journal.
        let at_checkpoint = dir.path().join("at-checkpoint");
        redb_image(&dir.path().join("raft-log.redb"), &at_checkpoint);
        assert_eq!(
            reopened(&at_checkpoint).await.0.len() as u64,
            CHECKPOINT_RECORDS
        );
        // An append too big for the journal is committed durably to redb instead.
        let big: Vec<(u64, Vec<u8>)> = (CHECKPOINT_RECORDS + 11..CHECKPOINT_RECORDS + 20)
            .map(|index| {
                let mut entry = postcard::to_stdvec(&Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Blank,
                })
                .expect("encode");
                // Trailing bytes past the entry are ignored by the decoder.
                entry.resize(super::super::journal::JOURNAL_BYTES as usize / 8, 0);
                (index, entry)
            })
            .collect();
        commit_op(&store.shared, &Op::Append(big)).expect("big append");
        drop(store);
        let image = dir.path().join("image");
        // redb alone, without the journal, holds it all: the big append found the journal too
        // small, so it checkpointed the 10 journaled appends and was committed durably itself.
        redb_image(&dir.path().join("raft-log.redb"), &image);
        let ids = reopened(&image).await.0;
        assert_eq!(ids.len() as u64, CHECKPOINT_RECORDS + 19);
    }
}
