//! `ferry`: one binary for the control plane (`ferry server`), and the kubectl-like verbs.

mod apply;
mod config;
mod datapath;
mod output;
mod podio;
mod rollout;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_api::client::{Client, ListOptions};
use ferry_api::kinds;
use futures::StreamExt;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: a container orchestrator with an eBPF datapath"
)]
struct Cli {
    /// API server address(es), comma-separated host:port. Default: $FERRY_SERVER, then the
    /// client config's `server`.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Client config (server, CA, client certificate). Default: $FERRY_CONFIG, then
    /// ~/.ferry/config (written by the first `ferry server`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node cluster on this machine: a control-plane member and a node agent in one
    /// process (the embedded default).
    Up(UpArgs),
    /// Run a control-plane member (the first one bootstraps a cluster).
    Server(ServerArgs),
    /// Run a node agent: register this machine as a Node and keep its heartbeat.
    Agent(AgentArgs),
    /// Images in this machine's agent image store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// This node's eBPF service datapath (run on the node, as root).
    Datapath {
        #[command(subcommand)]
        command: datapath::DatapathCommand,
    },
    /// Create or update objects from manifests (YAML or JSON, multi-document).
    Apply(ApplyArgs),
    /// List objects or show one.
    Get(GetArgs),
    /// Show an object in detail, with its events.
    Describe(DescribeArgs),
    /// Delete objects by name or from manifests.
    Delete(DeleteArgs),
    /// Print a container's log.
    Logs(podio::LogsArgs),
    /// Run a command in a running container: ferry exec POD [-c NAME] -- CMD [ARGS...]
    Exec(podio::ExecArgs),
    /// Manage a Deployment's rollouts: status, history, undo, pause, resume, restart, promote.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale(rollout::ScaleArgs),
    /// Control-plane membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create things that are not manifests: `ferry create token SERVICEACCOUNT`.
    Create {
        #[command(subcommand)]
        command: CreateCommand,
    },
    /// Join tokens for members and nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Inspect authorization.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Print a client config for a new user, with a certificate signed by the cluster CA of the
    /// member whose data directory this is (run on a control-plane member, as root).
    UserConfig(UserConfigArgs),
}

#[derive(Subcommand)]
enum CreateCommand {
    /// Print a token for a ServiceAccount (kubectl create token): a bearer token for the API,
    /// valid while the account (and the bound pod) exists.
    Token {
        /// The ServiceAccount.
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Lifetime, e.g. 30m, 24h (default 1h; at least 10m, at most 48h).
        #[arg(long)]
        duration: Option<String>,
        /// An audience of the token (repeatable; default: Ferry's API).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Bind the token to an object: only `Pod` (the token dies with it).
        #[arg(long)]
        bound_object_kind: Option<String>,
        /// The name of the object to bind the token to.
        #[arg(long)]
        bound_object_name: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it.
    Create {
        /// member, node (repeatable; default both).
        #[arg(long = "usage")]
        usages: Vec<String>,
        /// Lifetime, e.g. 30m, 24h, 7d (default: never expires).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List join tokens (ids, usages, expiry; never the secrets).
    List,
    /// Revoke a join token by id.
    Revoke { id: String },
}

/// `30s`, `15m`, `24h`, `7d` or plain seconds.
fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 30m, 24h, 7d"))?;
    Ok(n.saturating_mul(mult))
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Add a new encryption key and re-encrypt every Secret with it.
    RotateKey,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Whether you may do VERB on KIND (exit status 0 for yes, 1 for no), like kubectl auth can-i.
    CanI {
        verb: String,
        kind: String,
        name: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// All namespaces (cluster scope).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(long, default_value = "")]
        subresource: String,
    },
    /// Who the API server says you are.
    Whoami,
}

#[derive(Args)]
struct UserConfigArgs {
    /// The member's data directory (holds the cluster CA).
    #[arg(long, default_value = "/var/lib/ferry/server")]
    data_dir: PathBuf,
    /// User name (the certificate's CN).
    #[arg(long)]
    user: String,
    /// Groups (the certificate's O), repeatable.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Server list to put in the config (default: the member's admin.yaml server).
    #[arg(long)]
    server: Option<String>,
}

#[derive(Args)]
struct ServerArgs {
    /// Where this member keeps its raft log, state and snapshots.
    #[arg(long, default_value = "/var/lib/ferry/server")]
    data_dir: PathBuf,
    /// Address to serve the API, raft traffic and /metrics on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Address other members and clients reach this member at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// An existing member to join through; without it the first start bootstraps a new cluster.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// Join token, from <data-dir>/join-token on the first member (or $FERRY_TOKEN).
    #[arg(long, env = "FERRY_TOKEN")]
    token: Option<String>,
    /// When creating a cluster, also write the admin client config here ("-" for nowhere;
    /// default ~/.ferry/config). It is always written to <data-dir>/admin.yaml.
    #[arg(long)]
    admin_config: Option<String>,
    /// Take a snapshot (and compact the raft log) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Revisions of history kept for watches to resume from.
    #[arg(long, default_value_t = 50_000)]
    history: u64,
    /// Seconds a node may go without renewing its Lease before it is marked unreachable.
    #[arg(long, default_value_t = 10)]
    node_monitor_grace_seconds: u64,
    /// Control loops to run, comma-separated: `*` for all (default), a name to add, `-name`
    /// to leave one out (scheduler, nodeipam, replicaset, deployment, endpointslice,
    /// nodelifecycle, taint-eviction, loadbalancer, garbagecollector, namespace, job, cronjob,
    /// daemonset, statefulset, volumebinding).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Static bearer tokens, one `token,user,uid,"group1,group2"` per line (Kubernetes' format).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Addresses for LoadBalancer Services, e.g. 192.168.100.0/24 (default: none, they stay pending).
    #[arg(long)]
    loadbalancer_ip_pool: Option<String>,
    /// Where Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The pod network: every node gets a range of it (--node-cidr-mask-size).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// API requests per second allowed per user (cluster administrators exempt; 0: no limit).
    #[arg(long, default_value_t = 100.0)]
    rate_limit_qps: f64,
    /// Requests a user may make at once above the sustained rate.
    #[arg(long, default_value_t = 200.0)]
    rate_limit_burst: f64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (tar archive or directory), e.g. from `skopeo copy ... oci-archive:FILE`.
    Import {
        file: PathBuf,
        /// Reference to record when the archive names none (or only a bare tag).
        #[arg(long)]
        name: Option<String>,
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/ferry/agent")]
        data_dir: PathBuf,
    },
    /// Make an image of a root filesystem tarball (plain or gzip), as `docker import` does.
    ImportRootfs {
        file: PathBuf,
        /// The image's reference, e.g. localhost/busybox:1.
        #[arg(long)]
        name: String,
        /// Default command (the image's Cmd), repeatable: --cmd sh --cmd -c --cmd '...'.
        #[arg(long = "cmd")]
        cmd: Vec<String>,
        /// Environment of the image (NAME=VALUE), repeatable; PATH defaults to the usual.
        #[arg(long = "env")]
        env: Vec<String>,
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/ferry/agent")]
        data_dir: PathBuf,
    },
    /// Pull an image from its registry (`busybox:1.36` is `docker.io/library/busybox:1.36`).
    Pull {
        reference: String,
        /// A registry (`host[:port]`) to reach over plain HTTP; repeatable. Loopback registries
        /// (localhost, 127.0.0.0/8, [::1]) always are.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// The agent's data directory.
        #[arg(long, default_value = "/var/lib/ferry/agent")]
        data_dir: PathBuf,
    },
    /// List stored images.
    List {
        #[arg(long, default_value = "/var/lib/ferry/agent")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Where the member (`server/`) and the agent (`agent/`) keep their state.
    #[arg(long, default_value = "/var/lib/ferry")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The bridge pods' veths join.
    #[arg(long, default_value = "ferry0")]
    pod_bridge: String,
    /// Pod addresses: one /24 of it per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Port of the agent's logs/exec endpoint (0: any free port).
    #[arg(long, default_value_t = ferry_agent::node::DEFAULT_PORT)]
    agent_port: u16,
    /// Cgroup-v2 directory whose processes get socket load balancing (`/`: the whole machine).
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args)]
struct AgentArgs {
    /// Member addresses, comma-separated host:port.
    #[arg(long, required_unless_present = "cleanup")]
    server: Option<String>,
    /// This node's name (DNS-1123 subdomain).
    #[arg(long)]
    node_name: String,
    /// The node's InternalIP (default: the source address towards the server).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Where the agent keeps its credentials and state.
    #[arg(long, default_value = "/var/lib/ferry/agent")]
    data_dir: PathBuf,
    /// Join token (first start only; from `ferry token create --usage node`), or $FERRY_TOKEN.
    #[arg(long, env = "FERRY_TOKEN")]
    token: Option<String>,
    /// The bridge that pods' veths join in the node's network namespace.
    #[arg(long, default_value = "ferry0")]
    pod_bridge: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// A registry (HOST[:PORT]) to pull from over plain HTTP; loopback registries always are
    /// (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Port of the agent's logs/exec endpoint, for control-plane members (0: any free port).
    #[arg(long, default_value_t = ferry_agent::node::DEFAULT_PORT)]
    port: u16,
    /// Cgroup-v2 directory whose processes get socket load balancing for Services: `/` for the
    /// whole node; a subtree such as `/ferry/NODE` when several nodes share one kernel.
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// Where BPF maps and links are pinned (default /sys/fs/bpf/ferry/NODE).
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Interface where NodePort and LoadBalancer traffic from outside arrives: auto (the one
    /// holding the node address), none, or a name.
    #[arg(long, default_value = "auto")]
    uplink: String,
    /// The XDP fast path in front of the uplink's TC programs (as Cilium's
    /// loadBalancer.acceleration): disabled, native (XDP in the driver, or the agent fails),
    /// best-effort (native where the driver can, else TC only with a warning).
    #[arg(long, default_value = "disabled", value_parser = ["disabled", "native", "best-effort"])]
    lb_acceleration: String,
    /// The cluster's pod network, as the servers' --cluster-cidr: this node's pods' traffic to
    /// anywhere else leaves with the node's address (masquerade).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Masquerade pods' traffic leaving the cluster's pod network (--masquerade=false: pods
    /// keep their addresses, and the network must route pod CIDRs back).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    masquerade: bool,
    /// A resolver (IP:PORT) the cluster DNS forwards names outside the cluster domain to
    /// (repeatable; default: the node's non-loopback resolvers from /etc/resolv.conf).
    #[arg(long = "dns-upstream", value_name = "IP:PORT")]
    dns_upstreams: Vec<SocketAddr>,
    /// Remove everything this agent made on the node (containers, pod networks, the bridge,
    /// pod directories) and exit.
    #[arg(long)]
    cleanup: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How pod traffic reaches other nodes: `none` (routes via the nodes' addresses, nodes on
    /// one L2 segment) or `vxlan` (VXLAN device ferry.vxlan, VNI 1, UDP 8472).
    #[arg(long, default_value = "none", value_parser = ["none", "vxlan"])]
    tunnel: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ApplyArgs {
    /// File, directory or - for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Namespace for objects that name none.
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

#[derive(Args)]
struct GetArgs {
    /// Kind, plural or short name (po, deploy, svc, ...).
    kind: String,
    name: Option<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector (`app=web,tier in (a,b)`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector (`spec.nodeName=n1`).
    #[arg(long)]
    field_selector: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
}

#[derive(Args)]
struct DescribeArgs {
    kind: String,
    name: String,
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Args)]
struct DeleteArgs {
    kind: Option<String>,
    names: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// background, foreground or orphan.
    #[arg(long, default_value = "background")]
    cascade: String,
    /// Succeed when the object is already gone.
    #[arg(long)]
    ignore_not_found: bool,
    /// Pods: seconds the containers get to stop (default: the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long)]
    grace_period: Option<i64>,
    /// Pods: remove at once, without waiting for the node to stop the containers
    /// (same as --grace-period 0).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List members, their roles and the leader.
    Members,
    /// Add a running member at ADDR as a voter.
    Add {
        addr: String,
        /// Member id (default: the next unused one).
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Remove member ID.
    Remove { id: u64 },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A command that prints and exits ends quietly when its reader goes away (`ferry get pods |
    // head`), as Unix tools do; Rust ignores SIGPIPE, which turns that into a failed print.
    // Long-running processes keep ignoring it (a peer closing a socket is an error to handle).
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Server(_) | Command::Agent(_)
    ) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: restoring the default disposition, before any thread exists.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,hickory_server=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Server(a) = &cli.command {
        init_logging(a.log_format);
        let mut opts = ferry_control::server::ServerOptions::new(a.data_dir.clone(), a.listen);
        opts.advertise = a.advertise.clone();
        opts.join = a.join.clone();
        opts.token = a.token.clone();
        opts.admin_config = match a.admin_config.as_deref() {
            Some("-") => None,
            Some(p) => Some(PathBuf::from(p)),
            None => config::default_path(),
        };
        opts.snapshot_logs = a.snapshot_every.max(10);
        opts.history_retention = a.history.max(100);
        opts.cluster_cidr = a.cluster_cidr.clone();
        opts.service_cidr = a.service_cluster_ip_range.clone();
        opts.loadbalancer_pool = a.loadbalancer_ip_pool.clone();
        opts.token_auth_file = a.token_auth_file.clone();
        opts.node_monitor_grace =
            std::time::Duration::from_secs(a.node_monitor_grace_seconds.max(1));
        ferry_control::controllers::check_list(&a.controllers)
            .map_err(|e| anyhow::anyhow!("--controllers: {e}"))?;
        opts.controllers = a.controllers.clone();
        opts.node_cidr_mask = a.node_cidr_mask_size;
        opts.rate_limit_qps = a.rate_limit_qps.max(0.0);
        opts.rate_limit_burst = a.rate_limit_burst.max(1.0);
        ferry_control::server::run(opts).await?;
        return Ok(());
    }
    if let Command::Up(a) = &cli.command {
        init_logging(a.log_format);
        return up(a).await;
    }
    if let Command::Agent(a) = &cli.command {
        init_logging(a.log_format);
        let opts = ferry_agent::AgentOptions {
            server: a.server.clone().unwrap_or_default(),
            node_name: a.node_name.clone(),
            node_ip: a.node_ip,
            data_dir: a.data_dir.clone(),
            token: a.token.clone(),
            pod_bridge: a.pod_bridge.clone(),
            cluster_domain: a.cluster_domain.clone(),
            insecure_registries: a.insecure_registries.clone(),
            tunnel: a.tunnel.parse().map_err(anyhow::Error::msg)?,
            port: a.port,
            cgroup_root: a.cgroup_root.clone(),
            bpf_pin_dir: a.bpf_pin_dir.clone(),
            uplink: a.uplink.clone(),
            lb_acceleration: a.lb_acceleration.parse().map_err(anyhow::Error::msg)?,
            cluster_cidr: a.cluster_cidr.clone(),
            masquerade: a.masquerade,
            dns_upstreams: a.dns_upstreams.clone(),
        };
        if a.cleanup {
            ferry_agent::cleanup(&opts).await?;
            println!("node {} cleaned up", a.node_name);
        } else {
            ferry_agent::run(opts).await?;
        }
        return Ok(());
    }
    if let Command::Image { command } = &cli.command {
        return image(command).await;
    }
    if let Command::Datapath { command } = &cli.command {
        return datapath::run(command);
    }
    if let Command::UserConfig(a) = &cli.command {
        return user_config(a);
    }
    let client = config::client(cli.server.as_deref(), cli.config.as_deref())?;
    match cli.command {
        Command::Server(_) => unreachable!("handled above"),
        Command::Apply(a) => apply::apply(&client, &a.files, a.namespace.as_deref()).await,
        Command::Get(a) => get(&client, a).await,
        Command::Describe(a) => describe(&client, a).await,
        Command::Delete(a) => delete(&client, a).await,
        Command::Logs(a) => podio::logs(&client, a).await,
        Command::Exec(a) => {
            let code = podio::exec(&client, a).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Rollout { command } => rollout::rollout(&client, command).await,
        Command::Scale(a) => rollout::scale(&client, a).await,
        Command::Cluster { command } => cluster(&client, command).await,
        Command::Auth { command } => auth(&client, command).await,
        Command::Secrets {
            command: SecretsCommand::RotateKey,
        } => {
            let r = client.rotate_encryption_key().await?;
            println!(
                "new encryption key {}; {} secret(s) re-encrypted",
                r.key_id, r.reencrypted
            );
            Ok(())
        }
        Command::Token { command } => token(&client, command).await,
        Command::Create {
            command:
                CreateCommand::Token {
                    name,
                    namespace,
                    duration,
                    audiences,
                    bound_object_kind,
                    bound_object_name,
                },
        } => {
            let pod = match (bound_object_kind.as_deref(), bound_object_name) {
                (None, None) => String::new(),
                (Some("Pod"), Some(n)) => n,
                (Some("Pod"), None) => {
                    bail!("--bound-object-name: required with --bound-object-kind")
                }
                (None, Some(_)) => {
                    bail!("--bound-object-kind: required with --bound-object-name (Pod)")
                }
                (Some(k), _) => {
                    bail!("--bound-object-kind: unsupported value {k:?}: supported values: \"Pod\"")
                }
            };
            let seconds = duration
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--duration")?
                .unwrap_or(0);
            let t = client
                .create_service_account_token(
                    namespace.as_deref().unwrap_or("default"),
                    &name,
                    &audiences,
                    i64::try_from(seconds).unwrap_or(i64::MAX),
                    &pod,
                )
                .await?;
            println!("{}", t.token);
            Ok(())
        }
        Command::UserConfig(_)
        | Command::Agent(_)
        | Command::Image { .. }
        | Command::Datapath { .. }
        | Command::Up(_) => {
            unreachable!("handled above")
        }
    }
}

async fn token(client: &Client, c: TokenCommand) -> Result<()> {
    match c {
        TokenCommand::Create { usages, ttl } => {
            let ttl = ttl
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--ttl")?
                .unwrap_or(0);
            let t = client.create_token(&usages, ttl).await?;
            println!("{}", t.token);
        }
        TokenCommand::List => {
            println!("{:<8} {:<14} {:<22} EXPIRES", "ID", "USAGES", "CREATED");
            for t in client.list_tokens().await? {
                let exp = if t.expires_at.is_empty() {
                    "never".to_string()
                } else {
                    t.expires_at
                };
                println!(
                    "{:<8} {:<14} {:<22} {exp}",
                    t.id,
                    t.usages.join(","),
                    t.created_at
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(&id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn kind_arg(name: &str) -> Result<&'static kinds::KindInfo> {
    kinds::lookup(name).with_context(|| {
        format!(
            "the server doesn't have a resource type \"{name}\"; known types: {}",
            kinds::all()
                .iter()
                .map(|k| k.plural)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

async fn get(client: &Client, a: GetArgs) -> Result<()> {
    let info = kind_arg(&a.kind)?;
    let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out = std::io::stdout().lock();
    if let Some(name) = &a.name {
        let obj = client.get(info.kind, &ns, name).await?;
        match a.output {
            OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?,
            OutputFormat::Yaml => write!(out, "{}", output::yaml(&obj)?)?,
            OutputFormat::Name => writeln!(out, "{}", output::name_of(info, &obj))?,
            f => write!(
                out,
                "{}",
                output::table(info, &[obj], false, f == OutputFormat::Wide)
            )?,
        }
        return Ok(());
    }
    let opts = ListOptions {
        namespace: if a.all_namespaces || !info.namespaced {
            None
        } else {
            Some(ns)
        },
        label_selector: a.selector.clone().unwrap_or_default(),
        field_selector: a.field_selector.clone().unwrap_or_default(),
    };
    let list = client.list(info.kind, &opts).await?;
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let show_ns = a.all_namespaces && info.namespaced;
    match a.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
        OutputFormat::Yaml => write!(out, "{}", output::yaml(&list)?)?,
        OutputFormat::Name => {
            for o in &items {
                writeln!(out, "{}", output::name_of(info, o))?;
            }
        }
        f => {
            if items.is_empty() && !a.watch {
                match &opts.namespace {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                write!(
                    out,
                    "{}",
                    output::table(info, &items, show_ns, f == OutputFormat::Wide)
                )?;
            }
        }
    }
    out.flush()?;
    drop(out);
    if a.watch {
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut stream = client.watch(info.kind, &opts, &rv, false).await?;
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let mut out = std::io::stdout().lock();
            match a.output {
                OutputFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": ev.kind, "object": ev.object})
                )?,
                OutputFormat::Yaml => write!(
                    out,
                    "---\n{}",
                    output::yaml(&serde_json::json!({"type": ev.kind, "object": ev.object}))?
                )?,
                OutputFormat::Name => writeln!(out, "{}", output::name_of(info, &ev.object))?,
                f => write!(
                    out,
                    "{}",
                    output::rows_only(info, &[ev.object], show_ns, f == OutputFormat::Wide)
                )?,
            }
            out.flush()?;
        }
    }
    Ok(())
}

async fn describe(client: &Client, a: DescribeArgs) -> Result<()> {
    let info = kind_arg(&a.kind)?;
    let ns = a.namespace.unwrap_or_else(|| "default".into());
    let obj = client.get(info.kind, &ns, &a.name).await?;
    let events = client
        .list(
            "Event",
            &ListOptions {
                namespace: if info.namespaced {
                    Some(ns.clone())
                } else {
                    None
                },
                label_selector: String::new(),
                field_selector: format!(
                    "involvedObject.kind={},involvedObject.name={}",
                    info.kind, a.name
                ),
            },
        )
        .await
        .ok()
        .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    print!("{}", output::describe(info, &obj, &events)?);
    Ok(())
}

async fn delete(client: &Client, a: DeleteArgs) -> Result<()> {
    let policy = match a.cascade.to_ascii_lowercase().as_str() {
        "background" | "true" => "Background",
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        other => {
            bail!("--cascade: unsupported value {other:?}: use background, foreground or orphan")
        }
    };
    let mut targets: Vec<(&'static kinds::KindInfo, String, String)> = Vec::new();
    let default_ns = a.namespace.clone().unwrap_or_else(|| "default".into());
    if !a.files.is_empty() {
        for doc in apply::load_documents(&a.files)? {
            let (info, _) = ferry_api::strict::decode(&doc.object)
                .map_err(|e| anyhow::anyhow!("{}: {e}", doc.source))?;
            let name = doc
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ns = doc
                .object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(String::from);
            targets.push((info, ns.unwrap_or_else(|| default_ns.clone()), name));
        }
    } else {
        let Some(kind) = &a.kind else {
            bail!("give KIND NAME... or -f FILE")
        };
        let info = kind_arg(kind)?;
        if a.names.is_empty() {
            bail!("give at least one name: ferry delete {kind} NAME");
        }
        for n in &a.names {
            targets.push((info, default_ns.clone(), n.clone()));
        }
    }
    let opts = ferry_api::client::DeleteOptions {
        propagation: policy.into(),
        grace_period_seconds: if a.force { Some(0) } else { a.grace_period },
        ..Default::default()
    };
    let single = targets.len() == 1;
    let mut failed = 0;
    for (info, ns, name) in targets {
        match client.delete_with(info.kind, &ns, &name, &opts).await {
            Ok(_) => println!("{} \"{name}\" deleted", output::qualified(info)),
            Err(e) if e.is_not_found() && a.ignore_not_found => {}
            Err(e) if single => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) could not be deleted");
    }
    Ok(())
}

async fn cluster(client: &Client, c: ClusterCommand) -> Result<()> {
    let r = match c {
        ClusterCommand::Members => client.members().await?,
        ClusterCommand::Add { addr, id } => client.add_member(id, &addr).await?,
        ClusterCommand::Remove { id } => client.remove_member(id).await?,
    };
    println!(
        "{:<6} {:<24} {:<8} {:<7}",
        "ID", "ADDRESS", "ROLE", "LEADER"
    );
    for m in &r.members {
        println!(
            "{:<6} {:<24} {:<8} {:<7}",
            m.id,
            m.addr,
            if m.voter { "voter" } else { "learner" },
            if m.leader { "*" } else { "" }
        );
    }
    println!("term {}, applied index {}", r.term, r.applied_index);
    Ok(())
}

async fn auth(client: &Client, c: AuthCommand) -> Result<()> {
    match c {
        AuthCommand::CanI {
            verb,
            kind,
            name,
            namespace,
            all_namespaces,
            subresource,
        } => {
            let info = kind_arg(&kind)?;
            let ns = if all_namespaces || !info.namespaced {
                String::new()
            } else {
                namespace.unwrap_or_else(|| "default".into())
            };
            let r = client
                .access_review(
                    &verb,
                    info.kind,
                    &ns,
                    name.as_deref().unwrap_or(""),
                    &subresource,
                )
                .await?;
            if r.allowed {
                println!("yes");
                Ok(())
            } else {
                println!("no");
                if !r.reason.is_empty() {
                    eprintln!("{}", r.reason);
                }
                std::process::exit(1);
            }
        }
        AuthCommand::Whoami => {
            let r = client
                .access_review("get", "Namespace", "", "default", "")
                .await?;
            println!("user:   {}", r.user);
            println!("groups: {}", r.groups.join(", "));
            Ok(())
        }
    }
}

fn user_config(a: &UserConfigArgs) -> Result<()> {
    use ferry_control::pki::{Pki, Subject};
    if a.user.trim().is_empty() {
        bail!("--user: required (the user name)");
    }
    let pki = Pki::load(&a.data_dir)?.with_context(|| {
        format!(
            "{}: no cluster CA here; pass the data directory of a control-plane member",
            a.data_dir.display()
        )
    })?;
    let server = match &a.server {
        Some(s) => s.clone(),
        None => ferry_api::client::ClientConfig::load(&a.data_dir.join("admin.yaml"))
            .map(|c| c.server)
            .map_err(|e| anyhow::anyhow!("{e}; pass --server"))?,
    };
    let creds = pki.issue(&Subject {
        common_name: a.user.clone(),
        organizations: a.groups.clone(),
        serve_hosts: vec![],
    })?;
    let cfg = ferry_api::client::ClientConfig {
        server,
        certificate_authority_data: pki.ca_pem().to_string(),
        client_certificate_data: creds.cert_pem,
        client_key_data: creds.key_pem,
        token: String::new(),
    };
    print!("{}", cfg.to_yaml());
    Ok(())
}

async fn image(c: &ImageCommand) -> Result<()> {
    use ferry_agent::image::{ImageStore, PullOptions};
    match c {
        ImageCommand::Import {
            file,
            name,
            data_dir,
        } => {
            let store = ImageStore::open(data_dir)?;
            for img in store.import_oci_archive_as(file, name.as_deref())? {
                let refs: Vec<String> = img.references.iter().map(|r| r.to_string()).collect();
                let shown = if refs.is_empty() {
                    "(no name: pass --name)".to_string()
                } else {
                    refs.join(", ")
                };
                println!(
                    "imported {shown} {} ({} layer(s) unpacked)",
                    img.manifest_digest, img.layers_unpacked
                );
            }
        }
        ImageCommand::ImportRootfs {
            file,
            name,
            cmd,
            env,
            data_dir,
        } => {
            let store = ImageStore::open(data_dir)?;
            let mut env = env.clone();
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.insert(
                    0,
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                );
            }
            let config = ferry_agent::image::ContainerConfig {
                cmd: (!cmd.is_empty()).then(|| cmd.clone()),
                env: Some(env),
                ..Default::default()
            };
            let info = store.import_rootfs(file, name, config)?;
            println!("imported {name} {}", info.manifest_digest);
        }
        ImageCommand::Pull {
            reference,
            insecure_registries,
            data_dir,
        } => {
            let store = std::sync::Arc::new(ImageStore::open(data_dir)?);
            let opts = PullOptions {
                insecure_registries: insecure_registries.clone(),
                auth: None,
            };
            let r = store.pull_with_report(reference, &opts).await?;
            println!(
                "pulled {} {} ({} blob(s), {} bytes downloaded)",
                r.reference,
                r.info.manifest_digest,
                r.blobs_fetched.len(),
                r.bytes_fetched
            );
        }
        ImageCommand::List { data_dir } => {
            let store = ImageStore::open(data_dir)?;
            println!("{:<50} DIGEST", "REFERENCE");
            for i in store.list() {
                println!("{:<50} {}", i.reference.to_string(), i.manifest_digest);
            }
        }
    }
    Ok(())
}

/// The host name as a node name (lower case), or `node-1` when it is not a valid one.
fn default_node_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !h.is_empty() && ferry_api::validation::dns1123_subdomain_error(&h).is_none() {
        h
    } else {
        "node-1".into()
    }
}

/// `ferry up`: a member and an agent in one process.
async fn up(a: &UpArgs) -> Result<()> {
    let server_dir = a.data_dir.join("server");
    let mut opts = ferry_control::server::ServerOptions::new(server_dir.clone(), a.listen);
    opts.admin_config = config::default_path();
    opts.cluster_cidr = a.cluster_cidr.clone();
    let server = ferry_control::server::Server::start(opts).await?;
    let token = std::fs::read_to_string(server_dir.join("join-token"))
        .ok()
        .map(|t| t.trim().to_string());
    let node_name = a.node_name.clone().unwrap_or_else(default_node_name);
    let agent = ferry_agent::AgentOptions {
        server: server.local_addr.to_string(),
        node_name: node_name.clone(),
        node_ip: None,
        data_dir: a.data_dir.join("agent"),
        token,
        pod_bridge: a.pod_bridge.clone(),
        port: a.agent_port,
        cgroup_root: a.cgroup_root.clone(),
        cluster_cidr: a.cluster_cidr.clone(),
        ..ferry_agent::AgentOptions::new("", "", "")
    };
    println!(
        "ferry is up: API at {} (admin config in ~/.ferry/config), node {node_name}",
        server.local_addr
    );
    let result = ferry_agent::run(agent).await;
    server.stop().await;
    result.map_err(Into::into)
}
