#[derive(Debug, Clone)]
#[derive(Default)]
pub(crate) struct CommandState<NID: crate::NodeId> {
    /// The sequence number of the last finished sm command.
    pub(crate) finished_sm_seq: u64,
    /// FERRY: the last log id known durable in the local log store. A leader's appends return
    /// before they are flushed (replication starts at once); entries are applied only up to
    /// this.
    pub(crate) local_flushed: Option<crate::LogId<NID>>,
}
