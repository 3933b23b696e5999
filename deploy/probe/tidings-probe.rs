//! tidings-probe: the container health check for images without a shell or curl.
//!
//! `tidings-probe http://127.0.0.1:8080/readyz` sends one HTTP/1.0 GET to a loopback address
//! and exits 0 on a 2xx status, 1 otherwise (2 on bad usage). Standard library only; built
//! with plain `rustc` in the Dockerfiles, so it is not a workspace crate.
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::time::Duration;

fn probe(url: &str) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or("no address")?;
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: tidings-probe http://127.0.0.1:<port>/<path>");
        return ExitCode::from(2);
    };
    match probe(&url) {
        Ok(code) if (200..300).contains(&code) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("tidings-probe: {url} answered {code}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tidings-probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
