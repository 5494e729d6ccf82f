//! [`ContainerRuntime`] over the `runc` binary.
//!
//! Layout under [`RuncOptions::state_dir`]:
//! - `runc/`: runc's own state (`runc --root`);
//! - `containers/<id>/`: the bundle: `config.json` (built by [`super::spec`]), `meta.json`
//!   (labels, log path, cgroup), `runc.log` (runc's own JSON log), `pid` (written by runc
//!   once the container's process runs) and `exit` (its exit status, written by the monitor).
//!
//! Stdio and exit status: runc does not record exit codes; whoever is the parent of the
//! container's first process has to reap it. So every container gets a monitor, a detached
//! `/bin/sh` (own process group, stdio on `/dev/null`, reparented to init, so it survives agent
//! restarts and never sees the agent's terminal signals) that runs
//! `runc run --keep --pid-file ...` in the foreground with stdout and stderr appended to the
//! container's log file, then writes runc's exit status (the container's exit code, `128 + n`
//! for signal `n`) to `exit`. In the foreground without a terminal runc gives the container
//! pipes and copies them to its own stdout and stderr, i.e. the log file. `--keep` leaves the
//! stopped container and its cgroup in place, so the OOM kill counter can still be read; it
//! goes with [`ContainerRuntime::delete`]. runc's own failures (bad config, missing
//! executable) are read from `runc.log`; runc also prints them to the container log.
//!
//! Started = `pid` exists. `exit` without `pid` means runc failed before starting the process.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, ExecOutput, Result,
    RuntimeError,
    cgroup::{self, Hierarchy},
    spec::{self, SpecContext},
    validate_id,
};

/// PATH for runc and the monitor; the agent's environment is never passed on.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long to wait for a SIGKILLed container to be reported exited.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long [`Runc::delete`] waits for the monitor to record the exit of a killed container.
const MONITOR_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the exit file once runc reports the container stopped.
const EXIT_FILE_WAIT: Duration = Duration::from_secs(1);

/// The monitor: runs the container in the foreground and records runc's exit status.
/// Positional parameters: runc binary, runc root, bundle, container id, log file.
const MONITOR_SCRIPT: &str = r#"(
"$1" --root "$2" --log "$3/runc.log" --log-format json run --keep --pid-file "$3/pid" --bundle "$3" "$4" </dev/null >>"$5" 2>&1
echo $? >"$3/exit.tmp" && mv -f "$3/exit.tmp" "$3/exit"
) </dev/null >/dev/null 2>&1 &"#;

#[derive(Clone, Debug)]
pub struct RuncOptions {
    /// Where bundles and runc's state live (absolute). One per agent.
    pub state_dir: PathBuf,
    /// Cgroup parent of this agent's containers, relative, e.g. `ferry/node-a`: a container's
    /// cgroup is `/<cgroup_parent>/<id>`. Keyed by node so simulated nodes never collide.
    pub cgroup_parent: String,
    /// The runc binary: a path, or a name looked up in `PATH`.
    pub runc_binary: PathBuf,
    /// How long [`ContainerRuntime::run`] waits for the container's process to start.
    pub start_timeout: Duration,
}

impl RuncOptions {
    /// Defaults for node `node_name`: cgroup parent `ferry/<node_name>`, `runc` from `PATH`.
    pub fn new(state_dir: impl Into<PathBuf>, node_name: &str) -> Self {
        RuncOptions {
            state_dir: state_dir.into(),
            cgroup_parent: format!("ferry/{node_name}"),
            runc_binary: "runc".into(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// What the runtime keeps about a container besides the OCI spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    log_path: PathBuf,
    cgroups_path: PathBuf,
    labels: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Runc {
    opts: RuncOptions,
    runc: PathBuf,
    root: PathBuf,
    containers: PathBuf,
    hierarchies: Vec<Hierarchy>,
    swap_accounting: bool,
}

impl Runc {
    /// Checks the options, finds runc and the cgroup hierarchies, and creates the state
    /// directories.
    pub fn new(opts: RuncOptions) -> Result<Self> {
        let bad = |field, reason: &str| RuntimeError::InvalidOptions {
            field,
            reason: reason.to_owned(),
        };
        if !opts.state_dir.is_absolute() {
            return Err(bad("state_dir", "must be an absolute path"));
        }
        validate_cgroup_parent(&opts.cgroup_parent)
            .map_err(|reason| bad("cgroup_parent", &reason))?;
        let runc = find_binary(&opts.runc_binary).ok_or_else(|| {
            bad(
                "runc_binary",
                &format!("`{}` not found", opts.runc_binary.display()),
            )
        })?;
        let root = opts.state_dir.join("runc");
        let containers = opts.state_dir.join("containers");
        for dir in [&root, &containers] {
            fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                id: String::new(),
                op: "creating directory",
                path: dir.clone(),
                source,
            })?;
        }
        let hierarchies = cgroup::hierarchies().map_err(|source| RuntimeError::Io {
            id: String::new(),
            op: "reading",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
        let swap_accounting = cgroup::swap_accounting(&hierarchies);
        Ok(Runc {
            opts,
            runc,
            root,
            containers,
            hierarchies,
            swap_accounting,
        })
    }

    pub fn options(&self) -> &RuncOptions {
        &self.opts
    }

    /// The cgroup (absolute, in every hierarchy) of container `id`.
    pub fn cgroups_path(&self, id: &str) -> PathBuf {
        Path::new("/").join(&self.opts.cgroup_parent).join(id)
    }

    /// The bundle directory of container `id`.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.containers.join(id)
    }

    /// The directory of cgroup `path` in each mounted hierarchy (for inspection and tests).
    pub fn cgroup_dirs(&self, path: &Path) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir(path)).collect()
    }

    /// Removes this runtime's cgroup parent where it is empty (no containers left); for node
    /// teardown. Returns the directories that remain.
    pub fn remove_cgroup_parent(&self) -> Vec<PathBuf> {
        let parent = Path::new("/").join(&self.opts.cgroup_parent);
        let left = cgroup::remove(&self.hierarchies, &parent)
            .into_iter()
            .map(|(dir, _)| dir)
            .collect();
        // Then `ferry` and so on, which stay while another node uses them.
        for dir in parent.ancestors().skip(1).filter(|p| *p != Path::new("/")) {
            let _ = cgroup::remove(&self.hierarchies, dir);
        }
        left
    }

    fn io(id: &str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
        let id = id.to_owned();
        let path = path.to_path_buf();
        move |source| RuntimeError::Io {
            id,
            op,
            path,
            source,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .arg("--root")
            .arg(&self.root);
        cmd
    }

    /// Runs `runc --root <root> <args>`; a non-zero exit is [`RuntimeError::Command`].
    fn runc<S: AsRef<OsStr>>(&self, id: &str, args: &[S]) -> Result<Output> {
        let mut cmd = self.command();
        cmd.args(args);
        let display = || {
            let mut s = String::from("runc");
            for a in args {
                s.push(' ');
                s.push_str(&a.as_ref().to_string_lossy());
            }
            s
        };
        let out = cmd.output().map_err(|source| RuntimeError::Spawn {
            id: id.to_owned(),
            command: display(),
            source,
        })?;
        if !out.status.success() {
            return Err(RuntimeError::Command {
                id: id.to_owned(),
                command: display(),
                status: out.status.to_string(),
                stderr: runc_message(&String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(out)
    }

    /// Whether runc has state for `id`.
    fn runc_knows(&self, id: &str) -> bool {
        self.root.join(id).join("state.json").exists()
    }

    fn read_meta(&self, id: &str) -> Meta {
        fs::read(self.bundle_dir(id).join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Meta {
                cgroups_path: self.cgroups_path(id),
                ..Meta::default()
            })
    }

    fn read_exit(&self, id: &str) -> Option<i32> {
        let text = fs::read_to_string(self.bundle_dir(id).join("exit")).ok()?;
        text.trim().parse().ok()
    }

    fn exited(&self, meta: &Meta, exit_code: Option<i32>) -> ContainerStatus {
        ContainerStatus::Exited {
            exit_code,
            oom_killed: cgroup::oom_kills(&self.hierarchies, &meta.cgroups_path)
                .is_some_and(|n| n > 0),
        }
    }

    fn status(&self, id: &str, meta: &Meta) -> Result<ContainerStatus> {
        let bundle = self.bundle_dir(id);
        if let Some(code) = self.read_exit(id) {
            return Ok(self.exited(meta, Some(code)));
        }
        // Fast path, taken on every sync of every pod: a started container whose process is
        // alive runs. The monitor writes the exit file as soon as runc returns, so a missing
        // exit file plus a live pid is a running container (pid reuse within the moment
        // between the exit and the exit file only delays the answer to the next look).
        if let Some(pid) = fs::read_to_string(bundle.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !bundle.join("exit").exists()
        {
            return Ok(ContainerStatus::Running { pid: pid as u32 });
        }
        if !self.runc_knows(id) {
            return Ok(if bundle.join("pid").exists() {
                // Started, then removed from runc behind our back.
                self.exited(meta, None)
            } else {
                ContainerStatus::Creating
            });
        }
        let out = match self.runc(id, &["state", id]) {
            Ok(out) => out,
            // Deleted between the check and the call.
            Err(_) if !self.runc_knows(id) => return Ok(ContainerStatus::Creating),
            Err(e) => return Err(e),
        };
        let bad = |reason: String| RuntimeError::BadOutput {
            id: id.to_owned(),
            command: format!("runc state {id}"),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| bad(e.to_string()))?;
        let pid = v["pid"].as_u64().unwrap_or(0) as u32;
        match v["status"].as_str() {
            Some("creating" | "created") => Ok(ContainerStatus::Creating),
            Some("running" | "paused") => Ok(ContainerStatus::Running { pid }),
            Some("stopped") => {
                // The monitor writes the exit file right after runc returns.
                let deadline = Instant::now() + EXIT_FILE_WAIT;
                loop {
                    if let Some(code) = self.read_exit(id) {
                        return Ok(self.exited(meta, Some(code)));
                    }
                    if Instant::now() >= deadline {
                        return Ok(self.exited(meta, None));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
            other => Err(bad(format!("unknown status {other:?}"))),
        }
    }

    fn info(&self, id: &str) -> Result<ContainerInfo> {
        validate_id(id)?;
        if !self.bundle_dir(id).exists() && !self.runc_knows(id) {
            return Err(RuntimeError::NotFound { id: id.to_owned() });
        }
        let meta = self.read_meta(id);
        let status = self.status(id, &meta)?;
        let bundle = self.bundle_dir(id);
        let mtime = |name: &str| {
            fs::metadata(bundle.join(name))
                .and_then(|m| m.modified())
                .ok()
        };
        Ok(ContainerInfo {
            id: id.to_owned(),
            status,
            labels: meta.labels,
            log_path: meta.log_path,
            started_at: mtime("pid"),
            finished_at: if status.is_exited() {
                mtime("exit").or_else(|| Some(SystemTime::now()))
            } else {
                None
            },
        })
    }

    fn wait_exited(&self, id: &str, timeout: Duration) -> Result<Option<ContainerInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.info(id)?;
            if info.status.is_exited() {
                return Ok(Some(info));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        if all {
            self.runc(id, &["kill", "--all", id, signal])?;
        } else {
            self.runc(id, &["kill", id, signal])?;
        }
        Ok(())
    }

    /// Why runc failed to start the container: its last error log line, else the end of the
    /// container log.
    fn start_failure(&self, id: &str, log_path: &Path) -> String {
        let runc_log = fs::read_to_string(self.bundle_dir(id).join("runc.log")).unwrap_or_default();
        let from_runc = runc_log.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_owned())
        });
        if let Some(msg) = from_runc {
            return msg;
        }
        let tail = tail(log_path, 2048).unwrap_or_default();
        let exit = self
            .read_exit(id)
            .map_or("unknown".to_owned(), |c| c.to_string());
        format!("runc exited with status {exit}: {}", tail.trim())
    }
}

impl ContainerRuntime for Runc {
    fn run(&self, spec: &ContainerSpec) -> Result<ContainerInfo> {
        let id = spec.id.as_str();
        let cgroups_path = self.cgroups_path(id);
        let bundle = self.bundle_dir(id);
        let overlay_root = bundle.join("rootfs");
        let config = spec::build(
            spec,
            &SpecContext {
                cgroups_path: &cgroups_path,
                swap_accounting: self.swap_accounting,
                overlay_root: &overlay_root,
            },
        )?;
        if !spec.rootfs.is_dir() {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_owned(),
                field: "rootfs",
                reason: format!("{} is not a directory", spec.rootfs.display()),
            });
        }
        if self.runc_knows(id) {
            return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
        }
        match fs::create_dir(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
            }
            Err(e) => return Err(Self::io(id, "creating bundle", &bundle)(e)),
        }
        if let Some(o) = &spec.overlay {
            for dir in [&overlay_root, &o.upper, &o.work] {
                fs::create_dir_all(dir).map_err(Self::io(id, "creating", dir))?;
            }
        }
        // Opened here for a clear error; the monitor reopens it for appending.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(Self::io(id, "opening log file", &spec.log_path))?;
        let config_path = bundle.join("config.json");
        let config_json = serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::Io {
            id: id.to_owned(),
            op: "serializing",
            path: config_path.clone(),
            source: e.into(),
        })?;
        fs::write(&config_path, config_json).map_err(Self::io(id, "writing", &config_path))?;
        let meta = Meta {
            log_path: spec.log_path.clone(),
            cgroups_path,
            labels: spec.labels.clone(),
        };
        let meta_path = bundle.join("meta.json");
        fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )
        .map_err(Self::io(id, "writing", &meta_path))?;

        // From here the monitor's `runc run` may be on its way: `delete` lets it finish first.
        let marker = bundle.join("monitor");
        fs::write(&marker, b"").map_err(Self::io(id, "writing", &marker))?;
        let status = Command::new("/bin/sh")
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .arg("-c")
            .arg(MONITOR_SCRIPT)
            .arg("ferry-runc-monitor")
            .arg(&self.runc)
            .arg(&self.root)
            .arg(&bundle)
            .arg(id)
            .arg(&spec.log_path)
            .status()
            .map_err(|source| {
                let _ = fs::remove_file(&marker);
                RuntimeError::Spawn {
                    id: id.to_owned(),
                    command: "/bin/sh (monitor)".into(),
                    source,
                }
            })?;
        if !status.success() {
            let _ = fs::remove_file(&marker);
            return Err(RuntimeError::StartFailed {
                id: id.to_owned(),
                reason: format!("monitor shell exited with {status}"),
            });
        }

        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            if bundle.join("pid").exists() {
                return self.info(id);
            }
            if bundle.join("exit").exists() {
                return Err(RuntimeError::StartFailed {
                    id: id.to_owned(),
                    reason: self.start_failure(id, &spec.log_path),
                });
            }
            if started.elapsed() >= self.opts.start_timeout {
                return Err(RuntimeError::Timeout {
                    id: id.to_owned(),
                    what: "the container's process to start",
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn state(&self, id: &str) -> Result<ContainerInfo> {
        self.info(id)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<ContainerInfo> {
        let info = self.info(id)?;
        if info.status.is_exited() {
            return Ok(info);
        }
        // Errors are expected when the container exits meanwhile; what counts is the state.
        let _ = self.kill(id, "TERM", false);
        if let Some(info) = self.wait_exited(id, grace)? {
            return Ok(info);
        }
        let killed = self.kill(id, "KILL", true);
        match self.wait_exited(id, KILL_WAIT)? {
            Some(info) => Ok(info),
            None => {
                killed?;
                Err(RuntimeError::Timeout {
                    id: id.to_owned(),
                    what: "the container to exit after SIGKILL",
                    waited_ms: (grace + KILL_WAIT).as_millis(),
                })
            }
        }
    }

    fn delete(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let bundle = self.bundle_dir(id);
        let meta = self.read_meta(id);
        // A start still in progress (the monitor's `runc run` has not registered the container
        // yet) would finish after us and leave a running container behind: wait until runc
        // knows it or the start has ended, then kill and delete as usual.
        if bundle.join("monitor").exists() && !self.runc_knows(id) {
            let deadline = Instant::now() + self.opts.start_timeout;
            while !self.runc_knows(id) && !bundle.join("exit").exists() && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
        }
        if self.runc_knows(id) {
            let _ = self.kill(id, "KILL", true);
            if bundle.exists() {
                // Let the monitor record the exit before its directory goes.
                let deadline = Instant::now() + MONITOR_WAIT;
                while !bundle.join("exit").exists() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            if let Err(e) = self.runc(id, &["delete", "--force", id])
                && self.runc_knows(id)
            {
                return Err(e);
            }
        }
        if let Some((dir, source)) = cgroup::remove(&self.hierarchies, &meta.cgroups_path)
            .into_iter()
            .next()
        {
            return Err(RuntimeError::Io {
                id: id.to_owned(),
                op: "removing cgroup",
                path: dir,
                source,
            });
        }
        match fs::remove_dir_all(&bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(id, "removing bundle", &bundle)(e)),
        }
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
        output_limit: usize,
    ) -> Result<ExecOutput> {
        validate_id(id)?;
        if args.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_owned(),
                field: "command",
                reason: "must not be empty".into(),
            });
        }
        let (reader, writer) = io::pipe().map_err(Self::io(id, "creating pipe", Path::new("")))?;
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg(id)
            .args(args)
            .stdout(
                writer
                    .try_clone()
                    .map_err(Self::io(id, "cloning pipe", Path::new("")))?,
            )
            .stderr(writer);
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            id: id.to_owned(),
            command: format!("runc exec {id} {}", args.join(" ")),
            source,
        })?;
        // The command's own children may keep the pipe open after it exits; drop cmd's copies
        // of the write end so EOF comes when they are done.
        drop(cmd);
        let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        {
            let collected = collected.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut reader = reader;
                while let Ok(n @ 1..) = io::Read::read(&mut reader, &mut buf) {
                    let mut out = collected.lock().unwrap_or_else(|p| p.into_inner());
                    let keep = n.min(output_limit.saturating_sub(out.len()));
                    out.extend_from_slice(&buf[..keep]);
                }
                let _ = done_tx.send(());
            });
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RuntimeError::Timeout {
                        id: id.to_owned(),
                        what: "the exec'd command to finish",
                        waited_ms: timeout.as_millis(),
                    });
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(RuntimeError::Spawn {
                        id: id.to_owned(),
                        command: format!("runc exec {id}"),
                        source,
                    });
                }
            }
        };
        // Background processes the command left behind may hold the pipe open: take what
        // arrived shortly after the exit rather than wait for them.
        let _ = done_rx.recv_timeout(Duration::from_millis(200));
        let output = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
        let exit_code = status
            .code()
            .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
            .unwrap_or(-1);
        Ok(ExecOutput { exit_code, output })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ContainerInfo>> {
        let mut ids = std::collections::BTreeSet::new();
        for dir in [&self.containers, &self.root] {
            let entries = fs::read_dir(dir).map_err(Self::io("", "listing", dir))?;
            for entry in entries {
                let entry = entry.map_err(Self::io("", "listing", dir))?;
                if let Some(name) = entry.file_name().to_str()
                    && name.starts_with(prefix)
                    && validate_id(name).is_ok()
                {
                    ids.insert(name.to_owned());
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.info(&id) {
                Ok(info) => out.push(info),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn validate_cgroup_parent(parent: &str) -> Result<(), String> {
    if parent.is_empty() || parent.len() > 200 {
        return Err("must be 1 to 200 bytes long".into());
    }
    for part in parent.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "`{parent}`: components must be non-empty and not `.` or `..` (relative path)"
            ));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(format!("`{parent}`: may only contain [A-Za-z0-9_.-/]"));
        }
    }
    Ok(())
}

fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| SYSTEM_PATH.into());
    std::env::split_paths(&path)
        .chain(std::env::split_paths(SYSTEM_PATH))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// runc's logrus stderr (`time=... level=error msg="..."`) reduced to the message.
fn runc_message(stderr: &str) -> String {
    let msgs: Vec<&str> = stderr
        .lines()
        .filter_map(|l| {
            let m = l.split_once("msg=")?.1;
            Some(
                m.strip_prefix('"')
                    .and_then(|m| m.strip_suffix('"'))
                    .unwrap_or(m),
            )
        })
        .collect();
    if msgs.is_empty() {
        stderr.trim().to_owned()
    } else {
        msgs.join("; ")
    }
}

fn tail(path: &Path, max: u64) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents() {
        for ok in ["ferry/node-a", "ferry", "a.b/c_d"] {
            validate_cgroup_parent(ok).unwrap();
        }
        for bad in ["", "/ferry", "ferry/", "a//b", "../x", "a/./b", "a b"] {
            assert!(validate_cgroup_parent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runc_messages() {
        assert_eq!(
            runc_message("time=\"2024\" level=error msg=\"container does not exist\"\n"),
            "container does not exist"
        );
        assert_eq!(runc_message("plain\n"), "plain");
    }

    #[test]
    fn options_are_checked() {
        let mut o = RuncOptions::new("relative", "n1");
        assert!(matches!(
            Runc::new(o.clone()),
            Err(RuntimeError::InvalidOptions {
                field: "state_dir",
                ..
            })
        ));
        o.state_dir = "/nonexistent-ferry".into();
        o.cgroup_parent = "../x".into();
        assert!(matches!(
            Runc::new(o.clone()),
            Err(RuntimeError::InvalidOptions {
                field: "cgroup_parent",
                ..
            })
        ));
        o.cgroup_parent = "ferry/n1".into();
        o.runc_binary = "/nonexistent/runc".into();
        assert!(matches!(
            Runc::new(o),
            Err(RuntimeError::InvalidOptions {
                field: "runc_binary",
                ..
            })
        ));
    }
}
