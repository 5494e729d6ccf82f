//! Callbacks used by Storage API

use std::io;

use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    reply: FlushReply<C>,
}

/// FERRY: where a flush is reported: a oneshot the caller awaits, or (for a leader's own
/// append) straight to the core as `Notify::LocalLogFlushed`, from the thread that flushed,
/// without a task in between.
enum FlushReply<C>
where C: RaftTypeConfig
{
    Oneshot(OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>),
    Notify {
        tx: tokio::sync::mpsc::UnboundedSender<crate::core::notify::Notify<C>>,
        vote: crate::Vote<C::NodeId>,
        log_id: LogId<C::NodeId>,
    },
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            reply: FlushReply::Oneshot(tx),
        }
    }

    /// FERRY: a callback that reports the flush as `Notify::LocalLogFlushed` on `tx`.
    pub(crate) fn new_notify(
        log_io_id: LogIOId<C::NodeId>,
        tx: tokio::sync::mpsc::UnboundedSender<crate::core::notify::Notify<C>>,
        vote: crate::Vote<C::NodeId>,
        log_id: LogId<C::NodeId>,
    ) -> Self {
        Self {
            log_io_id,
            reply: FlushReply::Notify { tx, vote, log_id },
        }
    }

    /// FERRY: whether the caller waits for this flush before it does anything else (a
    /// follower's append, which it acknowledges only once durable). A leader's own append is
    /// not waited for: the leader replicates while it is written. A log store may write an
    /// awaited append on the caller's thread rather than hand it to another and wait.
    pub fn caller_waits(&self) -> bool {
        matches!(self.reply, FlushReply::Oneshot(_))
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(self, result: Result<(), io::Error>) {
        if let Err(e) = &result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
        }
        let sent = match self.reply {
            FlushReply::Oneshot(tx) => match result {
                Err(e) => tx.send(Err(e)).is_ok(),
                Ok(()) => tx.send(Ok(self.log_io_id)).is_ok(),
            },
            FlushReply::Notify { tx, vote, log_id } => tx
                .send(crate::core::notify::Notify::LocalLogFlushed {
                    vote,
                    log_id,
                    result: result.map_err(|e| e.to_string()),
                })
                .is_ok(),
        };
        if !sent {
            tracing::error!("failed to send log io completion event: receiver dropped");
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}
