//! `ferry-netcheck`: small network probes for the harness tests, run inside pods (from an image
//! the tests build with this binary, see `ferry_tests::image::host_binary_files`) or in the
//! harness' client namespace. The busybox of the test image has no UDP client or server.
//!
//! ```text
//! ferry-netcheck udp-echo PORT          answer every datagram with "<hostname> <peer ip:port>"
//! ferry-netcheck udp-ask IP PORT [N]    send N (default 1) datagrams, one at a time, on one
//!                                       socket; print "<reply> from <source ip:port>" for each
//! ```
//!
//! `udp-ask` uses an unconnected socket (`sendto`/`recvfrom`), the path of Ferry's
//! `sendmsg4`/`recvmsg4` hooks; it waits 2 s per reply and exits 1 if one never comes.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!("usage: ferry-netcheck udp-echo PORT | udp-ask IP PORT [COUNT]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["udp-echo", port] => match port.parse() {
            Ok(port) => udp_echo(port),
            Err(e) => Err(format!("PORT {port:?}: {e}")),
        },
        ["udp-ask", ip, port] => ask(ip, port, "1"),
        ["udp-ask", ip, port, count] => ask(ip, port, count),
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

fn ask(ip: &str, port: &str, count: &str) -> Result<(), String> {
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("IP {ip:?}: {e}"))?;
    let port: u16 = port.parse().map_err(|e| format!("PORT {port:?}: {e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("COUNT {count:?}: {e}"))?;
    udp_ask(SocketAddr::from((ip, port)), count)
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
    let mut buf = [0u8; 2048];
    loop {
        let (_, peer) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        let reply = format!("{host} {peer}");
        if let Err(e) = sock.send_to(reply.as_bytes(), peer) {
            eprintln!("ferry-netcheck: reply to {peer}: {e}");
        }
    }
}

fn udp_ask(to: SocketAddr, count: u32) -> Result<(), String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        sock.send_to(format!("ask {i}").as_bytes(), to)
            .map_err(|e| format!("send to {to}: {e}"))?;
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no reply from {to} to datagram {i}: {e}"))?;
        println!("{} from {from}", String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}
