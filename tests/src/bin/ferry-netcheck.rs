//! `ferry-netcheck`: small network probes for the harness tests, run inside pods (from an image
//! the tests build with this binary, see `ferry_tests::image::host_binary_files`) or in the
//! harness' client namespace. The busybox of the test image has no UDP client or server.
//!
//! ```text
//! ferry-netcheck udp-echo PORT          answer every datagram with "<hostname> <peer ip:port>";
//!                                       one over 1024 bytes gets "<hostname> <peer> <size>"
//!                                       padded with dots to its own size
//! ferry-netcheck udp-ask IP PORT [N [SIZE]]
//!                                       send N (default 1) datagrams of SIZE bytes (default:
//!                                       just "ask <i>"), one at a time, on one socket; print
//!                                       "<reply without padding> from <source ip:port>" each
//! ferry-netcheck http-load IP PORT SECONDS WORKERS new|keepalive
//!                                       HTTP GETs of / for SECONDS from WORKERS threads, a new
//!                                       connection per request or one kept-alive connection per
//!                                       worker; print "requests=N failures=M" and the first
//!                                       failures
//! ferry-netcheck probe-targets HTTPS_PORT GRPC_PORT
//!                                       what HTTPS and gRPC probes look at: HTTPS (self-signed)
//!                                       answering 200 on /healthz and 500 elsewhere, and
//!                                       grpc.health.v1 with "" and "ferry.Up" SERVING,
//!                                       "ferry.Down" NOT_SERVING
//! ```
//!
//! `udp-ask` uses an unconnected socket (`sendto`/`recvfrom`), the path of Ferry's
//! `sendmsg4`/`recvmsg4` hooks; it waits 2 s per reply and exits 1 if one never comes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ferry-netcheck udp-echo PORT | udp-ask IP PORT [COUNT [SIZE]] | http-load IP PORT SECONDS WORKERS new|keepalive | probe-targets HTTPS_PORT GRPC_PORT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["udp-echo", port] => match port.parse() {
            Ok(port) => udp_echo(port),
            Err(e) => Err(format!("PORT {port:?}: {e}")),
        },
        ["udp-ask", ip, port] => ask(ip, port, "1", "0"),
        ["udp-ask", ip, port, count] => ask(ip, port, count, "0"),
        ["udp-ask", ip, port, count, size] => ask(ip, port, count, size),
        ["http-load", ip, port, secs, workers, mode] => load(ip, port, secs, workers, mode),
        ["probe-targets", https, grpc] => probe_targets(https, grpc),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-netcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe_targets(https: &str, grpc: &str) -> Result<(), String> {
    let https: u16 = https
        .parse()
        .map_err(|e| format!("HTTPS_PORT {https:?}: {e}"))?;
    let grpc: u16 = grpc
        .parse()
        .map_err(|e| format!("GRPC_PORT {grpc:?}: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .map_err(|e| e.to_string())?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| e.to_string())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls = tokio::net::TcpListener::bind(("0.0.0.0", https))
            .await
            .map_err(|e| format!("listening on {https}: {e}"))?;
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((tcp, _)) = tls.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 2048];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let status = if buf[..n].starts_with(b"GET /healthz ") {
                        "200 OK"
                    } else {
                        "500 Internal Server Error"
                    };
                    let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("ferry.Up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("ferry.Down", tonic_health::ServingStatus::NotServing)
            .await;
        println!("probe targets: https on {https}, grpc on {grpc}");
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(SocketAddr::from((Ipv4Addr::UNSPECIFIED, grpc)))
            .await
            .map_err(|e| format!("gRPC on {grpc}: {e}"))
    })
}

fn ask(ip: &str, port: &str, count: &str, size: &str) -> Result<(), String> {
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("IP {ip:?}: {e}"))?;
    let port: u16 = port.parse().map_err(|e| format!("PORT {port:?}: {e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("COUNT {count:?}: {e}"))?;
    let size: usize = size.parse().map_err(|e| format!("SIZE {size:?}: {e}"))?;
    if size > MAX_DATAGRAM {
        return Err(format!("SIZE {size}: at most {MAX_DATAGRAM}"));
    }
    udp_ask(SocketAddr::from((ip, port)), count, size)
}

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// `text` padded with dots to `size` bytes (unchanged if it is longer).
fn padded(text: String, size: usize) -> Vec<u8> {
    let mut v = text.into_bytes();
    if v.len() < size {
        v.resize(size, b'.');
    }
    v
}

fn load(ip: &str, port: &str, secs: &str, workers: &str, mode: &str) -> Result<(), String> {
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("IP {ip:?}: {e}"))?;
    let port: u16 = port.parse().map_err(|e| format!("PORT {port:?}: {e}"))?;
    let secs: u64 = secs.parse().map_err(|e| format!("SECONDS {secs:?}: {e}"))?;
    let workers: usize = workers
        .parse()
        .map_err(|e| format!("WORKERS {workers:?}: {e}"))?;
    let keepalive = match mode {
        "new" => false,
        "keepalive" => true,
        _ => return Err(format!("mode {mode:?}: new or keepalive")),
    };
    http_load(
        SocketAddr::from((ip, port)),
        Duration::from_secs(secs),
        workers,
        keepalive,
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn udp_echo(port: u16) -> Result<(), String> {
    let sock =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("bind {port}: {e}"))?;
    let host = hostname();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        let reply = if n > 1024 {
            padded(format!("{host} {peer} {n}"), n)
        } else {
            format!("{host} {peer}").into_bytes()
        };
        if let Err(e) = sock.send_to(&reply, peer) {
            eprintln!("ferry-netcheck: reply to {peer}: {e}");
        }
    }
}

fn udp_ask(to: SocketAddr, count: u32, size: usize) -> Result<(), String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    for i in 0..count {
        sock.send_to(&padded(format!("ask {i}"), size), to)
            .map_err(|e| format!("send to {to}: {e}"))?;
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no reply from {to} to datagram {i}: {e}"))?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        println!("{} from {from}", reply.trim_end_matches('.'));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    requests: u64,
    failures: u64,
    first: Vec<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failures += 1;
        if self.first.len() < 5 {
            self.first.push(why);
        }
    }
}

/// One GET of `/` on `s` (already connected); the response must be a 200 with its whole body.
fn get(s: &mut TcpStream, close: bool) -> Result<(), String> {
    let req = if close {
        "GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nHost: load\r\n\r\n"
    };
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut r = BufReader::new(&mut *s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("status line: {e}"))?;
    if !line.starts_with("HTTP/1.1 200") && !line.starts_with("HTTP/1.0 200") {
        return Err(format!("status line {:?}", line.trim()));
    }
    let mut length = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("headers: {e}"))?;
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or("no Content-Length")?;
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(())
}

fn connect(to: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Requests at a modest pace (a few hundred per second in all) until `for_` passes; a failed
/// request is counted and, with keep-alive, the connection is opened again.
fn http_load(to: SocketAddr, for_: Duration, workers: usize, keepalive: bool) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + for_;
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let tally = tally.clone();
            std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                while Instant::now() < deadline {
                    let result = if keepalive {
                        let s = match conn.take() {
                            Some(s) => Ok(s),
                            None => connect(to),
                        };
                        s.and_then(|mut s| {
                            get(&mut s, false)?;
                            conn = Some(s);
                            Ok(())
                        })
                    } else {
                        connect(to).and_then(|mut s| get(&mut s, true))
                    };
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    t.requests += 1;
                    if let Err(e) = result {
                        t.fail(format!(
                            "{:.3}s: {e}",
                            (Instant::now() + for_ - deadline).as_secs_f64()
                        ));
                    }
                    drop(t);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    println!("requests={} failures={}", t.requests, t.failures);
    for f in &t.first {
        println!("failure: {f}");
    }
}
