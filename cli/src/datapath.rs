//! `ferry datapath services` and `ferry datapath conntrack`: what this node's service and
//! connection-tracking maps hold, read from the pinned BPF maps (works whether or not the
//! agent runs).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DatapathCommand {
    /// The service frontends and backends in this node's eBPF maps, and the programs' counters.
    Services {
        /// The node (its maps are pinned under /sys/fs/bpf/ferry/NODE).
        #[arg(long)]
        node_name: String,
        /// Where the agent pinned them, if not the default.
        #[arg(long)]
        bpf_pin_dir: Option<PathBuf>,
    },
    /// The north-south flows this node translates (NodePort, LoadBalancer, external IPs): each
    /// direction's tuple, what it is rewritten to, and how long it has been idle.
    Conntrack {
        /// The node (its maps are pinned under /sys/fs/bpf/ferry/NODE).
        #[arg(long)]
        node_name: String,
        /// Where the agent pinned them, if not the default.
        #[arg(long)]
        bpf_pin_dir: Option<PathBuf>,
    },
}

fn pin_dir(node_name: &str, bpf_pin_dir: &Option<PathBuf>) -> PathBuf {
    bpf_pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ferry").join(node_name))
}

fn conntrack(node_name: &str, dir: &std::path::Path) -> Result<()> {
    let flows = ferry_agent::datapath::conntrack::dump_pinned(dir).with_context(|| {
        format!(
            "reading the connection tracking in {} (is the agent of node {node_name} running, as root?)",
            dir.display()
        )
    })?;
    println!(
        "{:<7} {:<5} {:<45} {:<45} {:>6}  FLAGS",
        "DIR", "PROTO", "PACKET", "REWRITTEN TO", "IDLE"
    );
    let tuple = |((a, p), (b, q)): ((std::net::Ipv4Addr, u16), (std::net::Ipv4Addr, u16))| {
        format!("{a}:{p} -> {b}:{q}")
    };
    for f in &flows {
        let mut flags = Vec::new();
        if f.remote {
            flags.push("remote");
        }
        if f.closing {
            flags.push("closing");
        }
        if f.masquerade {
            flags.push("masquerade");
        }
        println!(
            "{:<7} {:<5} {:<45} {:<45} {:>5}s  {}",
            if f.reply { "reply" } else { "forward" },
            proto(f.proto),
            tuple(f.from),
            tuple(f.to),
            f.idle_s,
            flags.join(",")
        );
    }
    println!(
        "
{} entries",
        flows.len()
    );
    Ok(())
}

fn proto(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        _ => "?",
    }
}

pub fn run(c: &DatapathCommand) -> Result<()> {
    let (node_name, bpf_pin_dir) = match c {
        DatapathCommand::Services {
            node_name,
            bpf_pin_dir,
        } => (node_name, bpf_pin_dir),
        DatapathCommand::Conntrack {
            node_name,
            bpf_pin_dir,
        } => return conntrack(node_name, &pin_dir(node_name, bpf_pin_dir)),
    };
    let dir = pin_dir(node_name, bpf_pin_dir);
    let dump = ferry_agent::datapath::socklb::dump_pinned(&dir).with_context(|| {
        format!(
            "reading the service maps in {} (is the agent of node {node_name} running, as root?)",
            dir.display()
        )
    })?;
    println!(
        "{:<33} {:<5} {:<7} {:>8} {:>9} {:>11}  BACKENDS",
        "FRONTEND", "PROTO", "READY", "FLOWS", "PACKETS", "BYTES"
    );
    for f in &dump.frontends {
        let mut front = if f.frontend.addr.is_unspecified() {
            format!("*:{} (NodePort)", f.frontend.port)
        } else {
            format!("{}:{}", f.frontend.addr, f.frontend.port)
        };
        // externalTrafficPolicy: Local: what traffic from outside the node gets.
        if f.frontend.is_external() {
            front.push_str(" external");
        }
        let backends: Vec<String> = f
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let t = if i >= usize::from(f.ready) {
                    " (terminating)"
                } else {
                    ""
                };
                format!("{}:{}{t}", b.addr, b.port)
            })
            .collect();
        let mut affinity = f
            .affinity_s
            .map(|s| format!("  [ClientIP affinity {s}s]"))
            .unwrap_or_default();
        if f.maglev {
            affinity.push_str("  [maglev]");
        }
        println!(
            "{front:<33} {:<5} {:<7} {:>8} {:>9} {:>11}  {}{affinity}",
            proto(f.frontend.proto),
            format!("{}/{}", f.ready, f.backends.len()),
            f.counters.flows,
            f.counters.packets,
            f.counters.bytes,
            if backends.is_empty() {
                "<none: refused>".to_string()
            } else {
                backends.join(", ")
            }
        );
    }
    let stats: Vec<String> = dump.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("\ncounters: {}", stats.join(" "));
    Ok(())
}
