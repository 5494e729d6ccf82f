//! ferry-control: the control plane.
//!
//! Owns the replicated store (openraft + redb), the API server that is its only user, the raft
//! network between members and, later, the scheduler and controllers (API clients, never store
//! users).

pub mod apiserver;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod controllers;
pub mod encryption;
pub mod node;
pub mod nodeipam;
pub mod pki;
pub mod raft_net;
pub mod ratelimit;
pub mod rbac;
pub mod scheduler;
pub mod server;
pub mod serviceaccount;
pub mod store;
