//! The replicated store: openraft's log and state machine, both on redb.
//!
//! Only the API server (through [`crate::node::Node`]) reads or writes the store; controllers,
//! the scheduler, agents and the CLI go through the API.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); boxing it locally
// would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod journal;
pub mod log_store;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use state_machine::{RangeResult, ReadError, StateMachine};
pub use types::*;

#[cfg(test)]
mod conformance {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("open log");
            let sm = StateMachine::open(dir.path(), 1000).expect("open state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn put(key: &str, value: &str, precondition: Precondition) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            precondition,
        }
    }

    #[tokio::test]
    async fn revisions_cas_history_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path(), 4).expect("open");
        let r = sm
            .apply(vec![
                entry(1, put("/pods/a/x", "1", Precondition::Absent)),
                entry(2, put("/pods/a/x", "2", Precondition::Absent)),
                entry(3, put("/pods/a/x", "3", Precondition::ModRevision(1))),
                entry(4, put("/pods/a/x", "4", Precondition::ModRevision(1))),
                entry(5, put("/pods/b/y", "5", Precondition::None)),
            ])
            .await
            .expect("apply");
        assert!(matches!(r[0], CommandResult::Applied { revision: 1, .. }));
        assert!(
            matches!(&r[1], CommandResult::PreconditionFailed { current: Some(kv) } if kv.value == "1")
        );
        assert!(matches!(r[2], CommandResult::Applied { revision: 2, .. }));
        assert!(
            matches!(r[3], CommandResult::PreconditionFailed { .. }),
            "stale revision must fail"
        );
        assert!(matches!(r[4], CommandResult::Applied { revision: 3, .. }));
        let (kv, rev) = sm.get("/pods/a/x").expect("get");
        let kv = kv.expect("present");
        assert_eq!(
            (kv.value.as_str(), kv.create_revision, kv.mod_revision, rev),
            ("3", 1, 2, 3)
        );
        let all = sm.range("/pods/").expect("range");
        assert_eq!(all.kvs.len(), 2);
        assert_eq!(sm.range("/pods/a/").expect("range").kvs.len(), 1);
        let (ev, seen) = sm.events_after(1, 100).expect("history");
        assert_eq!(seen, 3);
        assert_eq!(
            ev.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(ev[0].prev.as_ref().map(|p| p.value.as_str()), Some("1"));

        let r = sm
            .apply(vec![entry(
                6,
                Command::Delete {
                    key: "/pods/a/x".into(),
                    precondition: Precondition::None,
                },
            )])
            .await
            .expect("apply");
        assert!(matches!(r[0], CommandResult::Applied { revision: 4, .. }));
        assert!(sm.get("/pods/a/x").expect("get").0.is_none());
        // Enough writes to compact history (retention 4).
        let writes: Vec<_> = (0..8)
            .map(|i| entry(7 + i, put("/cm/k", &i.to_string(), Precondition::None)))
            .collect();
        sm.apply(writes).await.expect("apply");
        assert_eq!(sm.revision(), 12);
        assert!(matches!(
            sm.events_after(1, 10),
            Err(ReadError::Compacted { .. })
        ));
        assert_eq!(sm.events_after(11, 10).expect("recent").0.len(), 1);
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut sm = StateMachine::open(dir.path(), 100).expect("open");
            sm.apply(vec![entry(
                1,
                put("/ns/default", "{}", Precondition::Absent),
            )])
            .await
            .expect("apply");
            // Force durability the way a snapshot does.
            let mut b = sm.get_snapshot_builder().await;
            openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
                .await
                .expect("snapshot");
        }
        let mut sm = StateMachine::open(dir.path(), 100).expect("reopen");
        assert_eq!(sm.revision(), 1);
        assert!(sm.get("/ns/default").expect("get").0.is_some());
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(applied.map(|l| l.index), Some(1));
        assert!(sm.get_current_snapshot().await.expect("snapshot").is_some());
    }

    /// Applied changes are read through the in-memory overlay before redb holds them: a range
    /// merges both (new keys, deletes and updates in key order), and the same state survives
    /// the commit to redb and a reopen.
    #[tokio::test]
    async fn reads_see_applied_changes_before_and_after_they_are_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path(), 100).expect("open");
        let writes: Vec<_> = ["a", "c", "e", "g"]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                entry(
                    i as u64 + 1,
                    put(&format!("/x/{k}"), "old", Precondition::None),
                )
            })
            .collect();
        sm.apply(writes).await.expect("apply");
        // Commit those to redb (a snapshot build commits the overlay durably).
        let mut b = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
            .await
            .expect("snapshot");
        sm.apply(vec![
            entry(5, put("/x/b", "new", Precondition::Absent)),
            entry(
                6,
                Command::Delete {
                    key: "/x/c".into(),
                    precondition: Precondition::None,
                },
            ),
            entry(7, put("/x/e", "new", Precondition::ModRevision(3))),
            entry(8, put("/x/h", "new", Precondition::None)),
            entry(9, put("/y/z", "other prefix", Precondition::None)),
        ])
        .await
        .expect("apply");
        let expect = vec![
            ("/x/a".to_string(), "old".to_string(), 1),
            ("/x/b".to_string(), "new".to_string(), 5),
            ("/x/e".to_string(), "new".to_string(), 7),
            ("/x/g".to_string(), "old".to_string(), 4),
            ("/x/h".to_string(), "new".to_string(), 8),
        ];
        let seen = |sm: &StateMachine| {
            let r = sm.range("/x/").expect("range");
            assert_eq!(r.revision, 9);
            r.kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value, kv.mod_revision))
                .collect::<Vec<_>>()
        };
        assert_eq!(seen(&sm), expect, "before the commit");
        assert!(sm.get("/x/c").expect("get").0.is_none());
        let (e, rev) = sm.get("/x/e").expect("get");
        assert_eq!((e.map(|kv| kv.create_revision), rev), (Some(3), 9));
        // A stale precondition fails against the overlay's record.
        let r = sm
            .apply(vec![entry(
                10,
                put("/x/e", "stale", Precondition::ModRevision(3)),
            )])
            .await
            .expect("apply");
        assert!(matches!(r[0], CommandResult::PreconditionFailed { .. }));
        sm.commit_applied().expect("commit");
        assert_eq!(seen(&sm), expect, "after the commit");
        drop(b);
        drop(sm);
        let sm = StateMachine::open(dir.path(), 100).expect("reopen");
        assert_eq!(seen(&sm), expect, "after a reopen");
        let (events, _) = sm.events_after(4, 100).expect("history");
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
    }

    /// A crash during a snapshot install, after the snapshot file was written and before the
    /// tables were replaced, is finished when the member opens its state machine again: the
    /// snapshot is never ahead of the applied state (openraft refuses to start then).
    #[tokio::test]
    async fn an_interrupted_snapshot_install_is_finished_on_open() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let mut leader = StateMachine::open(leader_dir.path(), 100).expect("open");
        let writes: Vec<_> = (1..=5)
            .map(|i| entry(i, put(&format!("/cm/k{i}"), "v", Precondition::None)))
            .collect();
        leader.apply(writes).await.expect("apply");
        let mut b = leader.get_snapshot_builder().await;
        let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(5));

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut sm = StateMachine::open(dir.path(), 100).expect("open");
            sm.apply(vec![entry(1, put("/cm/old", "v", Precondition::None))])
                .await
                .expect("apply");
            // The install's first step only: the snapshot file.
            sm.save_snapshot_file(&snap.meta, snap.snapshot.get_ref())
                .expect("snapshot file");
        }
        let mut sm = StateMachine::open(dir.path(), 100).expect("reopen");
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(applied.map(|l| l.index), Some(5));
        assert_eq!(sm.revision(), 5);
        assert_eq!(sm.range("/cm/").expect("range").kvs.len(), 5);
        assert!(sm.get("/cm/old").expect("get").0.is_none());
        // History before the snapshot is gone.
        assert!(matches!(
            sm.events_after(0, 10),
            Err(ReadError::Compacted { .. })
        ));
    }
}

#[cfg(test)]
mod recent_events_tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn put(index: u64, key: &str, value: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put {
                key: key.into(),
                value: value.into(),
                precondition: Precondition::None,
            }),
        }
    }

    fn summary(events: &[std::sync::Arc<Event>]) -> Vec<(u64, String, Option<String>)> {
        events
            .iter()
            .map(|e| {
                (
                    e.revision,
                    e.kv.value.clone(),
                    e.prev.as_ref().map(|p| p.value.clone()),
                )
            })
            .collect()
    }

    /// Watches read recent events from memory; a reopened member has none there and reads the
    /// history table: both must give the same events, limits and revisions.
    #[tokio::test]
    async fn events_from_memory_match_the_history_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path(), 1000).expect("open");
        let entries: Vec<_> = (1..=40)
            .map(|i| put(i, &format!("/cm/k{}", i % 7), &i.to_string()))
            .collect();
        sm.apply(entries).await.expect("apply");
        let read = |sm: &StateMachine| -> Vec<_> {
            [0, 1, 17, 39, 40, 41]
                .iter()
                .map(|&after| {
                    let (ev, seen) = sm.events_after(after, 10).expect("events");
                    (summary(&ev), seen)
                })
                .collect()
        };
        let from_memory = read(&sm);
        // Force the applies to disk (a snapshot does), then read through a fresh state machine.
        let mut b = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
            .await
            .expect("snapshot");
        drop((sm, b));
        let reopened = StateMachine::open(dir.path(), 1000).expect("reopen");
        assert_eq!(from_memory, read(&reopened));
        assert_eq!(from_memory[2].0.first().map(|e| e.0), Some(18));
        assert_eq!(
            from_memory[2].0[0].2.as_deref(),
            Some("11"),
            "prev value kept"
        );
        assert!(from_memory[4].0.is_empty() && from_memory[4].1 == 40);
    }

    /// The window keeps at most `retention` events; older revisions come from the table, and
    /// compacted ones still answer "too old".
    #[tokio::test]
    async fn the_window_never_outlives_the_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path(), 8).expect("open");
        let entries: Vec<_> = (1..=9).map(|i| put(i, "/cm/a", &i.to_string())).collect();
        sm.apply(entries).await.expect("apply");
        // Revision 1 fell out of the window (8 events) but is still in the table.
        let (ev, seen) = sm.events_after(0, 100).expect("table");
        assert_eq!((ev.len(), seen), (9, 9));
        let entries: Vec<_> = (10..=30).map(|i| put(i, "/cm/a", &i.to_string())).collect();
        sm.apply(entries).await.expect("apply");
        assert!(matches!(
            sm.events_after(2, 100),
            Err(ReadError::Compacted { .. })
        ));
        let (ev, seen) = sm.events_after(25, 100).expect("memory");
        assert_eq!(
            (ev.iter().map(|e| e.revision).collect::<Vec<_>>(), seen),
            (vec![26, 27, 28, 29, 30], 30)
        );
    }
}

#[cfg(test)]
mod batch_tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    #[tokio::test]
    async fn a_batch_applies_each_command_with_its_own_revision_and_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path(), 100).expect("open");
        let put = |k: &str, p| Command::Put {
            key: k.into(),
            value: k.into(),
            precondition: p,
        };
        let batch = Command::Batch(vec![
            put("/a", Precondition::Absent),
            put("/a", Precondition::Absent),
            put("/b", Precondition::None),
            Command::Delete {
                key: "/a".into(),
                precondition: Precondition::ModRevision(1),
            },
        ]);
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(batch),
        };
        let r = sm.apply(vec![entry]).await.expect("apply");
        let CommandResult::Batch(results) = &r[0] else {
            panic!("expected a batch result, got {r:?}")
        };
        assert!(matches!(
            results[0],
            CommandResult::Applied { revision: 1, .. }
        ));
        assert!(
            matches!(results[1], CommandResult::PreconditionFailed { .. }),
            "the second create conflicts"
        );
        assert!(matches!(
            results[2],
            CommandResult::Applied { revision: 2, .. }
        ));
        assert!(matches!(
            results[3],
            CommandResult::Applied { revision: 3, .. }
        ));
        let (events, _) = sm.events_after(0, 10).expect("history");
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
