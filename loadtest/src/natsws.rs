//! The `--baseline nats-ws` clients: the NATS protocol over WebSocket, straight to
//! nats-server's own WebSocket listener — the no-gateway floor every Tidings figure is put
//! next to.
//!
//! A baseline client subscribes to the subject JetStream re-publishes a channel's stored
//! messages on (`tidings.stored.<kind>.<name>`), which is exactly what a gateway
//! subscribes to: the publisher, the stream and the messages are the same, only the gateway
//! is missing. `Nats-Sequence` gives the `seq` for loss and duplicate counts.
//!
//! The client is written here on the same WebSocket stack as the Tidings clients (rather than
//! 5,000 async-nats clients with a background task each), so both sides of a comparison cost
//! the generator about the same.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// A subscribed connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One protocol operation from the server.
#[derive(Debug, PartialEq)]
pub enum Op<'a> {
    /// `MSG` / `HMSG`: the header block (if any) and the payload.
    Msg {
        /// Raw header block (`NATS/1.0\r\n…\r\n\r\n`).
        headers: &'a [u8],
        /// The message body.
        payload: &'a [u8],
    },
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `-ERR …`.
    Err(String),
    /// `INFO`, `+OK`.
    Other,
}

/// Accumulates the server's bytes (one WebSocket frame may hold many operations, and one
/// operation may span frames) and splits them into operations.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    at: usize,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn last_numbers<const N: usize>(line: &str) -> Option<[usize; N]> {
    let parts: Vec<&str> = line.split_ascii_whitespace().collect();
    let tail = parts.get(parts.len().checked_sub(N)?..)?;
    let mut out = [0usize; N];
    for (o, p) in out.iter_mut().zip(tail) {
        *o = p.parse().ok()?;
    }
    Some(out)
}

impl Parser {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, or `None` until more bytes arrive.
    pub fn next_op(&mut self) -> anyhow::Result<Option<Op<'_>>> {
        let rest = &self.buf[self.at..];
        let Some(eol) = find_crlf(rest) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol])?;
        let body = eol + 2;
        let (op, used) = if line.starts_with("HMSG ") {
            let [hdr, total] = last_numbers::<2>(line).ok_or_else(|| anyhow::anyhow!("bad HMSG: {line}"))?;
            anyhow::ensure!(hdr <= total, "bad HMSG: {line}");
            let end = body
                .checked_add(total)
                .and_then(|e| e.checked_add(2))
                .ok_or_else(|| anyhow::anyhow!("bad HMSG: {line}"))?;
            if rest.len() < end {
                return Ok(None);
            }
            let start = self.at + body;
            (
                Op::Msg {
                    headers: &self.buf[start..start + hdr],
                    payload: &self.buf[start + hdr..start + total],
                },
                end,
            )
        } else if line.starts_with("MSG ") {
            let [len] = last_numbers::<1>(line).ok_or_else(|| anyhow::anyhow!("bad MSG: {line}"))?;
            let end = body
                .checked_add(len)
                .and_then(|e| e.checked_add(2))
                .ok_or_else(|| anyhow::anyhow!("bad MSG: {line}"))?;
            if rest.len() < end {
                return Ok(None);
            }
            let start = self.at + body;
            (
                Op::Msg {
                    headers: &[],
                    payload: &self.buf[start..start + len],
                },
                end,
            )
        } else if line == "PING" {
            (Op::Ping, body)
        } else if line == "PONG" {
            (Op::Pong, body)
        } else if let Some(e) = line.strip_prefix("-ERR") {
            (Op::Err(e.trim().to_owned()), body)
        } else {
            (Op::Other, body)
        };
        self.at += used;
        Ok(Some(op))
    }
}

/// The value of header `name` in a NATS header block.
pub fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(headers).ok()?.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The subject a baseline client subscribes to for `channel`: the re-published stored
/// subject a gateway subscribes to.
pub fn stored_subject(channel: &str) -> anyhow::Result<String> {
    Ok(tidings_shared::Channel::parse(channel)?.stored_subject())
}

/// Opens a WebSocket to nats-server from `source`, sends `CONNECT` and `SUB subject`, and
/// returns once a `PONG` proves the subscription is in place.
pub async fn open_subscribed(addr: SocketAddr, source: IpAddr, subject: &str) -> anyhow::Result<(Ws, Parser)> {
    open_subscribed_all(addr, source, &[subject.to_owned()]).await
}

/// [`open_subscribed`] to several subjects (sids 1, 2, …) on one connection.
pub async fn open_subscribed_all(
    addr: SocketAddr,
    source: IpAddr,
    subjects: &[String],
) -> anyhow::Result<(Ws, Parser)> {
    let stream = crate::connect_from(source, addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await?;
    let mut hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":false,\"protocol\":1,\"lang\":\"tidings-loadtest\",\"version\":\"1\"}\r\n".to_owned();
    for (i, subject) in subjects.iter().enumerate() {
        hello.push_str(&format!("SUB {subject} {}\r\n", i + 1));
    }
    hello.push_str("PING\r\n");
    ws.send(Message::Binary(hello.into_bytes().into())).await?;
    let mut parser = Parser::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no PONG from nats-server within 30 s"))?;
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec().into(),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("nats-server closed during setup: {other:?}"),
        };
        parser.push(&bytes);
        while let Some(op) = parser.next_op()? {
            match op {
                Op::Pong => return Ok((ws, parser)),
                Op::Err(e) => anyhow::bail!("nats-server refused: {e}"),
                _ => {}
            }
        }
    }
}

/// Reads `ws` until it closes, calling `on_msg(headers, payload)` for each message and
/// answering the server's `PING`s.
pub async fn read_loop(mut ws: Ws, mut parser: Parser, mut on_msg: impl FnMut(&[u8], &[u8])) {
    while let Some(Ok(msg)) = ws.next().await {
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes().to_vec().into(),
            _ => continue,
        };
        parser.push(&bytes);
        let mut pings = 0;
        loop {
            match parser.next_op() {
                Ok(Some(Op::Msg { headers, payload })) => on_msg(headers, payload),
                Ok(Some(Op::Ping)) => pings += 1,
                Ok(Some(Op::Err(e))) => {
                    eprintln!("nats-server error on a baseline connection: {e}");
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    eprintln!("baseline connection: {e}; closing it");
                    return;
                }
            }
        }
        for _ in 0..pings {
            if ws.send(Message::Binary(b"PONG\r\n".to_vec().into())).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_operations_across_and_within_frames() {
        let mut p = Parser::default();
        let hdr = "NATS/1.0\r\nNats-Sequence: 42\r\n\r\n";
        let wire = format!(
            "INFO {{}}\r\nPING\r\nHMSG a.b 1 {} {}\r\n{hdr}hello\r\nMSG c 1 2\r\nhi\r\n",
            hdr.len(),
            hdr.len() + 5
        );
        let (a, b) = wire.as_bytes().split_at(40);
        p.push(a);
        assert_eq!(p.next_op().unwrap(), Some(Op::Other));
        assert_eq!(p.next_op().unwrap(), Some(Op::Ping));
        assert_eq!(p.next_op().unwrap(), None, "HMSG is incomplete");
        p.push(b);
        match p.next_op().unwrap() {
            Some(Op::Msg { headers, payload }) => {
                assert_eq!(header(headers, "nats-sequence"), Some("42"));
                assert_eq!(payload, b"hello");
            }
            other => panic!("expected HMSG, got {other:?}"),
        }
        assert_eq!(
            p.next_op().unwrap(),
            Some(Op::Msg {
                headers: &[],
                payload: b"hi"
            })
        );
        assert_eq!(p.next_op().unwrap(), None);
    }

    #[test]
    fn malformed_lengths_are_errors() {
        let mut p = Parser::default();
        p.push(b"HMSG a 1 9 3\r\n");
        assert!(p.next_op().is_err());
    }
}
