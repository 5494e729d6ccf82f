//! The informer lives in ferry-api (shared with the control plane's scheduler).

pub use ferry_api::informer::{Cache, Informer, lock};
