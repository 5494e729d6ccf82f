//! Container runtime of one node: runs a pod's containers from a root filesystem directory, in
//! their own mount, pid, uts and ipc namespaces and in the pod's network namespace, under cgroup
//! limits, with their output in a log file.
//!
//! [`ContainerRuntime`] is the seam the pod sync loop talks to; [`runc::Runc`] is the real
//! implementation (it writes an OCI bundle and drives the `runc` binary). A containerd/CRI
//! backend can implement the same trait later.
//!
//! The trait is synchronous on purpose: every call is one or a few short `runc` invocations
//! (tens of milliseconds), except [`ContainerRuntime::stop`], which waits up to the grace period.
//! Async callers run it under `tokio::task::spawn_blocking`. A sync trait stays object safe
//! (`Arc<dyn ContainerRuntime>`) without boxing futures.
//!
//! What a runtime owns, on the node it runs on:
//! - the containers whose ids it was given, their bundles and state under its state directory;
//! - their cgroups, under a cgroup parent keyed by the node (see
//!   [`runc::RuncOptions::cgroup_parent`]) so that several simulated nodes on one machine never
//!   touch each other's containers;
//! - writing the container's stdout and stderr to [`ContainerSpec::log_path`] (the file itself
//!   belongs to the caller: it survives [`ContainerRuntime::delete`], so logs of an exited
//!   container can still be read, and is appended to across restarts).
//!
//! What it must never do:
//! - touch containers, cgroups or files outside its own state directory and cgroup parent,
//!   other than the log file and the paths a spec names;
//! - create, enter or tear down network namespaces: it only joins the one the spec names
//!   (the pod network owns them, see [`crate::network`]);
//! - modify the root filesystem directory beyond what runc needs (mount points for the spec's
//!   bind mounts); copy-on-write snapshots come with image pulling;
//! - panic on bad input: a bad spec is [`RuntimeError::InvalidSpec`].
//!
//! Root filesystem: without [`ContainerSpec::overlay`] the directory is used in place as the
//! container's root; a writable root writes into the directory itself, so the caller must then
//! give each container its own copy. With it, the directory is the read-only lower layer of an
//! overlay that runc mounts as the container's `/` inside the container's mount namespace (an
//! OCI mount at `/` on an empty `root.path`), which is what lets one unpacked image serve every
//! container. The overlay never appears in the node's mount table: a node's table does not grow
//! with its containers, and every `runc` invocation (which reads `/proc/self/mountinfo`
//! several times) stays as cheap with 100 containers as with one. With
//! [`ContainerSpec::readonly_rootfs`] the root is mounted read-only either way.

pub mod cgroup;
pub mod error;
pub mod runc;
pub mod spec;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub use self::{
    error::RuntimeError,
    runc::{Runc, RuncOptions},
};

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A container runtime: create+start, inspect, stop, delete and list containers.
///
/// Invariants every implementation keeps:
/// - ids are unique per runtime; [`ContainerRuntime::run`] with an id that exists is
///   [`RuntimeError::AlreadyExists`], never a replacement;
/// - an exited container keeps its exit code and OOM flag until it is deleted;
/// - [`ContainerRuntime::delete`] is idempotent and kills the container first if it still runs;
/// - a container outlives the process that started it (the agent may restart), and
///   [`ContainerRuntime::list`] finds it again.
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts a container. Returns once its process runs (or has already exited);
    /// a container that could not be started is an error (and is left for
    /// [`ContainerRuntime::delete`] to clean up).
    fn run(&self, spec: &ContainerSpec) -> Result<ContainerInfo>;

    /// The container's current state; [`RuntimeError::NotFound`] when there is no such
    /// container.
    fn state(&self, id: &str) -> Result<ContainerInfo>;

    /// Sends SIGTERM, waits up to `grace` for the container to exit, then sends SIGKILL and
    /// waits for the exit. Returns the final state. Stopping an exited container is a no-op.
    fn stop(&self, id: &str, grace: Duration) -> Result<ContainerInfo>;

    /// Kills the container if it still runs and removes it with its bundle, state and cgroup.
    /// Deleting a container that does not exist succeeds.
    fn delete(&self, id: &str) -> Result<()>;

    /// All containers whose id starts with `prefix`, sorted by id (for adoption after an agent
    /// restart).
    fn list(&self, prefix: &str) -> Result<Vec<ContainerInfo>>;

    /// Runs `args` inside the running container `id` (its namespaces, cgroup, environment
    /// and user), without a terminal, and returns its exit code and combined output (at most
    /// `output_limit` bytes kept; probes keep [`EXEC_OUTPUT_LIMIT`]). A command still running
    /// after `timeout` is killed and is [`RuntimeError::Timeout`]. Exec probes and `ferry exec`
    /// use it.
    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
        output_limit: usize,
    ) -> Result<ExecOutput>;
}

/// Output kept of an exec probe, as Kubernetes keeps.
pub const EXEC_OUTPUT_LIMIT: usize = 10 * 1024;

/// What an exec returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    /// stdout and stderr, interleaved as they arrived, truncated to the limit asked for.
    pub output: Vec<u8>,
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique per runtime: 1 to 128 bytes of `[A-Za-z0-9_.+-]`, not starting with `.`.
    pub id: String,
    /// Root filesystem directory (an unpacked image), absolute. With [`ContainerSpec::overlay`]
    /// it is the overlay's read-only lower layer and is never written.
    pub rootfs: PathBuf,
    /// A copy-on-write root: the runtime mounts an overlay of `rootfs` with these directories
    /// on top, inside the container's own mount namespace, so the node's mount table does not
    /// grow with every container (and it goes away with the container's last process).
    pub overlay: Option<OverlayDirs>,
    /// Mount the root filesystem read-only (see the module docs).
    pub readonly_rootfs: bool,
    /// Command and arguments; the first element is resolved with the container's `PATH`.
    pub args: Vec<String>,
    /// Environment, in order. `PATH` gets a default when missing.
    pub env: Vec<(String, String)>,
    /// Absolute working directory; `/` when `None`.
    pub working_dir: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Hostname in the container's own UTS namespace; `None` keeps the node's hostname
    /// (the new namespace starts as a copy). The pod sync loop sets the pod's hostname.
    pub hostname: Option<String>,
    pub network: NetworkNamespace,
    /// Bind mounts on top of the root filesystem, in order (the pod's `/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/hostname`; later volumes).
    pub mounts: Vec<BindMount>,
    pub resources: Resources,
    /// Where the container's stdout and stderr go (appended; the parent directory must exist).
    pub log_path: PathBuf,
    /// Free-form labels kept with the container (also as OCI annotations), for adoption: the
    /// pod sync loop records which pod and container spec a container belongs to.
    pub labels: BTreeMap<String, String>,
}

/// The writable layer of an overlay root filesystem: `upper` holds what the container writes,
/// `work` is overlayfs' scratch directory on the same file system. Both absolute; created by
/// the runtime if missing; owned by the caller, which removes them after the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Which network namespace a container runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkNamespace {
    /// Join an existing namespace, e.g. the pod's (`PodNetConfig::netns_path`).
    Join(PathBuf),
    /// A new, empty namespace (only `lo`, down).
    #[default]
    New,
    /// The node's namespace (`hostNetwork`).
    Host,
}

/// A bind mount from the node into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute path on the node (file or directory).
    pub source: PathBuf,
    /// Absolute path in the container.
    pub destination: PathBuf,
    pub readonly: bool,
}

/// Cgroup limits (a container's `resources.limits`); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (swap is limited to the same amount where the node accounts
    /// swap, so the limit is not escaped by swapping).
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores: a CFS quota of `millis * 100` µs per 100 ms period.
    pub cpu_millis: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// A container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub status: ContainerStatus,
    pub labels: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// When its process started; `None` before it did.
    pub started_at: Option<SystemTime>,
    /// When it exited, as far as the runtime knows; `None` while it runs.
    pub finished_at: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Being created: its process has not started yet (or creation failed half-way and the
    /// container awaits deletion).
    Creating,
    Running {
        /// Pid of the container's first process, in the node's pid namespace.
        pid: u32,
    },
    Exited {
        /// The process's exit code; `128 + n` when killed by signal `n`. `None` when the exit
        /// status was lost (the runtime's monitor process died).
        exit_code: Option<i32>,
        /// The kernel OOM-killed a process of the container (its memory cgroup counted an
        /// OOM kill).
        oom_killed: bool,
    },
}

impl ContainerStatus {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerStatus::Running { .. })
    }

    pub fn is_exited(&self) -> bool {
        matches!(self, ContainerStatus::Exited { .. })
    }
}

/// Checks a container id: what runc accepts, and safe as a file and cgroup name.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason: &'static str| RuntimeError::InvalidSpec {
        id: id.to_owned(),
        field: "id",
        reason: reason.to_owned(),
    };
    if id.is_empty() || id.len() > 128 {
        return Err(bad("must be 1 to 128 bytes long"));
    }
    if id.starts_with('.') {
        return Err(bad("must not start with `.`"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
    {
        return Err(bad("may only contain [A-Za-z0-9_.+-]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "pod_ns_name-uid.c+1", &"x".repeat(128)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", ".a", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
