//! Ferry node agent: node registration, pod sync, container runtime, pod network, the eBPF
//! datapath loader, probes and DNS. Talks to the control plane only through the API client.

pub mod credentials;
pub mod datapath;
pub mod dns;
pub mod image;
pub mod informer;
pub mod localvolumes;
pub mod network;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod sysinfo;

pub use node::{AgentOptions, cleanup, run};
