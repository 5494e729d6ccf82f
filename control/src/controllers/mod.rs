//! Controllers: level-triggered control loops that run only on the raft leader and use the API
//! through [`ferry_api::client::Api`] (in-process, never the store). Each has a pure decision
//! function, unit-tested, and a small executor that applies its actions.

pub mod endpointslice;
pub mod loadbalancer;
pub mod nodelifecycle;
pub mod replicaset;
