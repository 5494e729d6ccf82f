//! Generated protobuf and gRPC types. Only the client module and the server's API layer use these;
//! domain code works on typed objects and `serde_json::Value`.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("ferry.v1");
