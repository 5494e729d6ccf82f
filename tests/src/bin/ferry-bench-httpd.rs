//! `ferry-bench-httpd`: the backend of the `datapath` benchmark (tests/src/bin/ferry-bench/
//! datapath.rs), run in backend pods from an image the benchmark builds.
//!
//! A minimal HTTP/1.1 server on tokio: every request (headers only; bodies are not expected)
//! gets `200 OK` and a 13-byte body. Keep-alive by default; a request with `Connection: close`
//! gets the same header back and the connection is closed after the response, so the load
//! generator opens a new connection per request. It does as little as possible per request so
//! that what the benchmark compares (the path between client and server) weighs as much as it
//! can in the figures.
//!
//! Usage: `ferry-bench-httpd [PORT...]` (default 8080), listening on every address.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = b"hello, ferry\n";
const MAX_HEAD: usize = 16 * 1024;

fn main() -> std::process::ExitCode {
    let mut ports = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.parse::<u16>() {
            Ok(p) => ports.push(p),
            Err(e) => {
                eprintln!(
                    "ferry-bench-httpd: PORT {arg:?}: {e} (usage: ferry-bench-httpd [PORT...])"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    if ports.is_empty() {
        ports.push(8080);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-bench-httpd: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let servers = ports.iter().map(|&p| async move { (p, serve(p).await) });
        // Each server runs until it fails; the first failure ends the process.
        let ((port, r), _, _) = futures::future::select_all(servers.map(Box::pin)).await;
        r.map_err(|e| format!("port {port}: {e}"))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench-httpd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    eprintln!("ferry-bench-httpd: listening on 0.0.0.0:{port}");
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(async move {
                    let _ = connection(sock).await;
                });
            }
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("ferry-bench-httpd: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Whether the request head asks to close the connection (`Connection: close`).
fn wants_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.trim_ascii();
        match line.iter().position(|&b| b == b':') {
            Some(i) => {
                line[..i].eq_ignore_ascii_case(b"connection")
                    && line[i + 1..].trim_ascii().eq_ignore_ascii_case(b"close")
            }
            None => false,
        }
    })
}

async fn connection(mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let keep = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    let close = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let mut out = Vec::with_capacity(1024);
    loop {
        let n = sock.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // Answer every complete request in the buffer (pipelining), in one write.
        let mut start = 0;
        let mut closing = false;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[start..start + end];
            closing = wants_close(head);
            out.extend_from_slice(if closing { &close } else { &keep });
            out.extend_from_slice(BODY);
            start += end + 4;
            if closing {
                break;
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return sock.shutdown().await;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            // A head larger than MAX_HEAD: not a client of this benchmark.
            sock.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wants_close;

    #[test]
    fn connection_close_is_found_in_any_case() {
        assert!(wants_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        ));
        assert!(wants_close(b"GET / HTTP/1.1\r\nconnection:Close"));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!wants_close(
            b"GET /Connection: close HTTP/1.1\r\nHost: x\r\n"
        ));
    }
}
