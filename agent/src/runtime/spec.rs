//! Translation of a [`ContainerSpec`] into an OCI runtime spec (`config.json`). Pure: no file
//! or process is touched here, so every rule is unit-tested without root.
//!
//! The base is `runc spec`'s default (mounts, masked and read-only paths, device rules) with
//! Docker's default capability set and `no_new_privileges`; seccomp and AppArmor profiles are
//! not applied yet.

use std::{collections::HashMap, path::Path};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::{ContainerSpec, NetworkNamespace, Result, RuntimeError};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for CPU limits, as Kubernetes and Docker use.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's smallest CFS quota.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Annotation prefix under which labels are copied into `config.json`.
pub const LABEL_ANNOTATION_PREFIX: &str = "io.ferry.label.";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Node-side facts the spec depends on.
#[derive(Clone, Debug)]
pub struct SpecContext<'a> {
    /// The container's cgroup, e.g. `/ferry/node-a/<id>`.
    pub cgroups_path: &'a Path,
    /// Whether the memory cgroup accounts swap (`memory.memsw.*` exists on cgroup v1); only
    /// then is the swap limit set (runc fails on a missing file).
    pub swap_accounting: bool,
    /// The OCI `root.path` when the spec has an overlay root: an empty directory the overlay is
    /// mounted on inside the container's mount namespace. Unused otherwise.
    pub overlay_root: &'a Path,
}

/// Checks `spec` and builds its OCI runtime spec.
pub fn build(spec: &ContainerSpec, ctx: &SpecContext<'_>) -> Result<Spec> {
    validate(spec)?;
    let id = spec.id.as_str();
    let oci = |source| RuntimeError::Spec {
        id: id.to_owned(),
        source,
    };

    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }

    let caps: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    // As Docker: a non-root user gets the bounding set only, so it cannot use the
    // capabilities unless it executes a file with file capabilities. Inheritable and ambient
    // stay empty (CVE-2022-24769).
    let in_effect = if spec.uid == 0 {
        caps.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(in_effect.clone())
        .permitted(in_effect)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(oci)?;

    let mut user = UserBuilder::default().uid(spec.uid).gid(spec.gid);
    if !spec.additional_gids.is_empty() {
        user = user.additional_gids(spec.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(oci)?)
        .args(spec.args.clone())
        .env(env)
        .cwd(spec.working_dir.clone().unwrap_or_else(|| "/".into()))
        .capabilities(capabilities)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .map_err(oci)?,
        ])
        .no_new_privileges(true)
        .build()
        .map_err(oci)?;

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None).map_err(oci)?,
        namespace(LinuxNamespaceType::Ipc, None).map_err(oci)?,
        namespace(LinuxNamespaceType::Uts, None).map_err(oci)?,
        namespace(LinuxNamespaceType::Mount, None).map_err(oci)?,
    ];
    match &spec.network {
        NetworkNamespace::Join(path) => {
            namespaces.push(namespace(LinuxNamespaceType::Network, Some(path)).map_err(oci)?)
        }
        NetworkNamespace::New => {
            namespaces.push(namespace(LinuxNamespaceType::Network, None).map_err(oci)?)
        }
        NetworkNamespace::Host => {}
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        // Deny all devices; runc adds its defaults (null, zero, full, tty, random, urandom,
        // pts, ptmx) on top, as for `runc spec`.
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(oci)?,
    ]);
    let limits = spec.resources;
    if let Some(bytes) = limits.memory_bytes {
        let bytes = to_i64(id, "resources.memory_bytes", bytes)?;
        let mut memory = LinuxMemoryBuilder::default().limit(bytes);
        if ctx.swap_accounting {
            // memsw counts memory + swap: equal to the limit means no swap at all.
            memory = memory.swap(bytes);
        }
        resources = resources.memory(memory.build().map_err(oci)?);
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = millis
            .checked_mul(CPU_PERIOD_US / 1000)
            .ok_or_else(|| invalid(id, "resources.cpu_millis", "too large"))?
            .max(MIN_CPU_QUOTA_US);
        let cpu = LinuxCpuBuilder::default()
            .period(CPU_PERIOD_US)
            .quota(to_i64(id, "resources.cpu_millis", quota)?)
            .build()
            .map_err(oci)?;
        resources = resources.cpu(cpu);
    }
    if let Some(pids) = limits.pids {
        let pids = LinuxPidsBuilder::default()
            .limit(to_i64(id, "resources.pids", pids)?)
            .build()
            .map_err(oci)?;
        resources = resources.pids(pids);
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(ctx.cgroups_path.to_path_buf())
        .resources(resources.build().map_err(oci)?)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()
        .map_err(oci)?;

    let mut mounts = Vec::new();
    let root_path = match &spec.overlay {
        Some(o) => {
            // First, so that /proc, /dev and the bind mounts land on the overlay. runc mounts
            // it on root.path after its own bind mount of that directory, then pivots into it.
            mounts.push(
                MountBuilder::default()
                    .destination("/")
                    .typ("overlay")
                    .source("overlay")
                    .options(vec![format!(
                        "lowerdir={},upperdir={},workdir={}",
                        spec.rootfs.display(),
                        o.upper.display(),
                        o.work.display()
                    )])
                    .build()
                    .map_err(oci)?,
            );
            ctx.overlay_root.to_path_buf()
        }
        None => spec.rootfs.clone(),
    };
    mounts.extend(default_mounts().map_err(oci)?);
    for bind in &spec.mounts {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if bind.readonly {
            options.push("ro".to_owned());
        }
        mounts.push(
            MountBuilder::default()
                .destination(bind.destination.clone())
                .typ("bind")
                .source(bind.source.clone())
                .options(options)
                .build()
                .map_err(oci)?,
        );
    }

    let annotations: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (format!("{LABEL_ANNOTATION_PREFIX}{k}"), v.clone()))
        .collect();

    let mut builder = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(root_path)
                .readonly(spec.readonly_rootfs)
                .build()
                .map_err(oci)?,
        )
        .mounts(mounts)
        .process(process)
        .annotations(annotations)
        .linux(linux);
    if let Some(hostname) = &spec.hostname {
        builder = builder.hostname(hostname.clone());
    }
    let mut out = builder.build().map_err(oci)?;
    if spec.hostname.is_none() {
        // The builder starts from `Spec::default()`, whose hostname is "youki".
        out.set_hostname(None);
    }
    Ok(out)
}

fn namespace(
    typ: LinuxNamespaceType,
    path: Option<&Path>,
) -> Result<LinuxNamespace, oci_spec::OciSpecError> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        b = b.path(path.to_path_buf());
    }
    b.build()
}

/// `runc spec`'s mounts.
fn default_mounts() -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let m = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    Ok(vec![
        m("/proc", "proc", "proc", &[])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

fn validate(spec: &ContainerSpec) -> Result<()> {
    super::validate_id(&spec.id)?;
    let id = spec.id.as_str();
    if !spec.rootfs.is_absolute() {
        return Err(invalid(id, "rootfs", "must be an absolute path"));
    }
    if let Some(o) = &spec.overlay {
        for p in [&spec.rootfs, &o.upper, &o.work] {
            if !p.is_absolute() {
                return Err(invalid(
                    id,
                    "overlay",
                    &format!("{}: must be an absolute path", p.display()),
                ));
            }
            // They are joined into one option string: `,` separates options, `:` lower layers.
            if p.to_string_lossy().contains([',', ':']) {
                return Err(invalid(
                    id,
                    "overlay",
                    &format!("{}: must not contain ',' or ':'", p.display()),
                ));
            }
        }
    }
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(invalid(id, "args", "must name a command"));
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err(invalid(id, "args", "must not contain NUL"));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(
                id,
                "env",
                &format!("bad variable `{k}` (empty, or contains `=` or NUL)"),
            ));
        }
    }
    if let Some(dir) = &spec.working_dir
        && !dir.is_absolute()
    {
        return Err(invalid(id, "working_dir", "must be an absolute path"));
    }
    if let Some(h) = &spec.hostname
        && (h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(invalid(
            id,
            "hostname",
            "must be 1 to 64 bytes of [A-Za-z0-9.-]",
        ));
    }
    if let NetworkNamespace::Join(path) = &spec.network
        && !path.is_absolute()
    {
        return Err(invalid(
            id,
            "network",
            "namespace path must be an absolute path",
        ));
    }
    for m in &spec.mounts {
        if !m.source.is_absolute() || !m.destination.is_absolute() {
            return Err(invalid(
                id,
                "mounts",
                &format!(
                    "{} -> {}: both paths must be absolute",
                    m.source.display(),
                    m.destination.display()
                ),
            ));
        }
    }
    if !spec.log_path.is_absolute() {
        return Err(invalid(id, "log_path", "must be an absolute path"));
    }
    let r = spec.resources;
    if r.memory_bytes == Some(0) || r.cpu_millis == Some(0) || r.pids == Some(0) {
        return Err(invalid(id, "resources", "a limit of 0 is not allowed"));
    }
    Ok(())
}

fn to_i64(id: &str, field: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| invalid(id, field, "too large"))
}

fn invalid(id: &str, field: &'static str, reason: &str) -> RuntimeError {
    RuntimeError::InvalidSpec {
        id: id.to_owned(),
        field,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::{BindMount, OverlayDirs, Resources};

    fn base() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            rootfs: "/images/busybox".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            log_path: "/var/log/c1.log".into(),
            ..Default::default()
        }
    }

    fn ctx() -> SpecContext<'static> {
        SpecContext {
            cgroups_path: Path::new("/ferry/n1/c1"),
            swap_accounting: true,
            overlay_root: Path::new("/bundles/c1/rootfs"),
        }
    }

    fn json(spec: &ContainerSpec) -> serde_json::Value {
        serde_json::to_value(build(spec, &ctx()).unwrap()).unwrap()
    }

    #[test]
    fn overlay_root_is_the_first_mount_on_the_empty_root() {
        let mut s = base();
        s.overlay = Some(OverlayDirs {
            upper: "/c1/upper".into(),
            work: "/c1/work".into(),
        });
        let v = json(&s);
        assert_eq!(v["root"]["path"], "/bundles/c1/rootfs");
        let first = &v["mounts"][0];
        assert_eq!(first["destination"], "/");
        assert_eq!(first["type"], "overlay");
        assert_eq!(
            first["options"][0],
            "lowerdir=/images/busybox,upperdir=/c1/upper,workdir=/c1/work"
        );
        assert_eq!(v["mounts"][1]["destination"], "/proc");
    }

    #[test]
    fn defaults() {
        let v = json(&base());
        assert_eq!(v["root"]["path"], "/images/busybox");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["env"][0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!(v["process"]["user"]["uid"], 0);
        assert_eq!(
            v["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/ferry/n1/c1");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert!(v.get("hostname").is_none());
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&"/proc/kcore".into())
        );
    }

    #[test]
    fn everything() {
        let mut s = base();
        s.readonly_rootfs = true;
        s.env = vec![("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())];
        s.working_dir = Some("/tmp".into());
        s.uid = 1000;
        s.gid = 1000;
        s.additional_gids = vec![5];
        s.hostname = Some("web-0".into());
        s.network = NetworkNamespace::Join("/run/netns/p1".into());
        s.mounts = vec![BindMount {
            source: "/data/p1/hosts".into(),
            destination: "/etc/hosts".into(),
            readonly: true,
        }];
        s.resources = Resources {
            memory_bytes: Some(16 << 20),
            cpu_millis: Some(250),
            pids: Some(64),
        };
        s.labels = [("pod".to_owned(), "default/web-0".to_owned())].into();
        let v = json(&s);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(
            v["process"]["env"],
            serde_json::json!(["PATH=/bin", "A=b=c"])
        );
        assert_eq!(v["process"]["cwd"], "/tmp");
        assert_eq!(v["process"]["user"]["additionalGids"][0], 5);
        assert_eq!(
            v["process"]["capabilities"]["effective"],
            serde_json::json!([])
        );
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(v["hostname"], "web-0");
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], "/run/netns/p1");
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 16 << 20);
        assert_eq!(r["memory"]["swap"], 16 << 20);
        assert_eq!(r["cpu"]["quota"], 25_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 64);
        let last = v["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["destination"], "/etc/hosts");
        assert_eq!(last["type"], "bind");
        assert_eq!(
            last["options"],
            serde_json::json!(["rbind", "rprivate", "ro"])
        );
        assert_eq!(
            v["annotations"][format!("{LABEL_ANNOTATION_PREFIX}pod")],
            "default/web-0"
        );
    }

    #[test]
    fn host_network_and_tiny_cpu() {
        let mut s = base();
        s.network = NetworkNamespace::Host;
        s.resources.cpu_millis = Some(1);
        let v = json(&s);
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["type"] != "network")
        );
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 1_000);
        let mut s = base();
        s.resources.memory_bytes = Some(1 << 20);
        let no_swap = SpecContext {
            swap_accounting: false,
            ..ctx()
        };
        let v = serde_json::to_value(build(&s, &no_swap).unwrap()).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert!(v["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn rejects_bad_input() {
        type Mutate = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("id", Box::new(|s| s.id = "../x".into())),
            ("rootfs", Box::new(|s| s.rootfs = "rel".into())),
            ("args", Box::new(|s| s.args.clear())),
            ("args", Box::new(|s| s.args = vec![String::new()])),
            (
                "env",
                Box::new(|s| s.env = vec![("A=B".into(), "c".into())]),
            ),
            (
                "env",
                Box::new(|s| s.env = vec![(String::new(), "c".into())]),
            ),
            (
                "working_dir",
                Box::new(|s| s.working_dir = Some("tmp".into())),
            ),
            ("hostname", Box::new(|s| s.hostname = Some("a b".into()))),
            (
                "network",
                Box::new(|s| s.network = NetworkNamespace::Join("netns".into())),
            ),
            (
                "mounts",
                Box::new(|s| {
                    s.mounts = vec![BindMount {
                        source: PathBuf::from("a"),
                        destination: "/b".into(),
                        readonly: false,
                    }]
                }),
            ),
            ("log_path", Box::new(|s| s.log_path = "log".into())),
            (
                "overlay",
                Box::new(|s| {
                    s.overlay = Some(OverlayDirs {
                        upper: "upper".into(),
                        work: "/w".into(),
                    })
                }),
            ),
            (
                "overlay",
                Box::new(|s| {
                    s.overlay = Some(OverlayDirs {
                        upper: "/a,b/upper".into(),
                        work: "/w".into(),
                    })
                }),
            ),
            ("resources", Box::new(|s| s.resources.pids = Some(0))),
            (
                "resources.memory_bytes",
                Box::new(|s| s.resources.memory_bytes = Some(u64::MAX)),
            ),
            (
                "resources.cpu_millis",
                Box::new(|s| s.resources.cpu_millis = Some(u64::MAX)),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = base();
            mutate(&mut s);
            match build(&s, &ctx()) {
                Err(RuntimeError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
