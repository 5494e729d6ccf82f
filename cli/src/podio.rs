//! `ferry logs` and `ferry exec`: through the API server, which relays to the pod's node.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use ferry_api::{client::Client, proto};
use futures::StreamExt;

#[derive(Args)]
pub struct LogsArgs {
    /// The pod.
    pub pod: String,
    /// The container (required when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Keep streaming new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// The previous instance of the container (before its last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
}

#[derive(Args)]
pub struct ExecArgs {
    /// The pod.
    pub pod: String,
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Seconds before the command is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u32,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn logs(client: &Client, a: LogsArgs) -> Result<()> {
    let mut stream = client
        .pod_logs(proto::PodLogsRequest {
            namespace: a.namespace.unwrap_or_else(|| "default".into()),
            pod: a.pod,
            container: a.container.unwrap_or_default(),
            follow: a.follow,
            previous: a.previous,
            tail_lines: a.tail.unwrap_or(0).max(0),
            uid: String::new(),
        })
        .await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}

/// Runs the command; returns its exit code (the CLI exits with it).
pub async fn exec(client: &Client, a: ExecArgs) -> Result<i32> {
    let (output, code) = client
        .pod_exec(proto::PodExecRequest {
            namespace: a.namespace.unwrap_or_else(|| "default".into()),
            pod: a.pod,
            container: a.container.unwrap_or_default(),
            command: a.command,
            timeout_seconds: a.timeout,
            uid: String::new(),
        })
        .await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&output)?;
    out.flush()?;
    Ok(code)
}
