//! A small SMTP server speaking real SMTP over TCP (RFC 5321 subset: EHLO/HELO, MAIL, RCPT,
//! DATA with dot-unstuffing, RSET, NOOP, QUIT), recording every message it accepts; or,
//! in refusing mode, answering `MAIL FROM` with a chosen reply code (to test failover).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A message as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `MAIL FROM` argument.
    pub from: String,
    /// `RCPT TO` arguments.
    pub to: Vec<String>,
    /// The raw message (headers and body), CRLF line ends, dot-unstuffed.
    pub data: String,
}

/// A running server.
pub struct SmtpServer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Messages accepted so far.
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// A server that accepts every message.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// A server answering `MAIL FROM` with `code` (e.g. 554 or 451) when given.
    pub async fn start_with(refuse: Option<u16>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = session(sock, sink, refuse).await;
                });
            }
        });
        Ok(SmtpServer { addr, received, task })
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    sink: Arc<Mutex<Vec<Received>>>,
    refuse: Option<u16>,
) -> std::io::Result<()> {
    let (read, mut write) = sock.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 tidings-test ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-tidings-test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into()
        } else if upper.starts_with("HELO") {
            "250 tidings-test\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            if let Some(code) = refuse {
                format!("{code} refused by test server\r\n")
            } else {
                from = cmd[10..].trim().to_owned();
                "250 OK\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            to.push(cmd[8..].trim().to_owned());
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            if let Ok(mut s) = sink.lock() {
                s.push(Received {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
            }
            "250 OK queued\r\n".into()
        } else if upper == "RSET" || upper == "NOOP" {
            "250 OK\r\n".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}
