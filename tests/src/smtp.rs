//! A small SMTP server speaking real SMTP over TCP (RFC 5321 subset: EHLO/HELO, MAIL, RCPT,
//! DATA with dot-unstuffing, RSET, NOOP, QUIT, and STARTTLS (RFC 3207) with a self-signed
//! certificate when asked), recording every message it accepts; or, in refusing mode,
//! answering `MAIL FROM` with a chosen reply code (to test failover).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

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
    /// With STARTTLS: the self-signed certificate (PEM) clients must trust.
    pub cert_pem: Option<String>,
    /// Whether each accepted message came over TLS.
    pub tls_used: Arc<Mutex<Vec<bool>>>,
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
        Self::launch(refuse, None).await
    }

    /// A server offering STARTTLS with a fresh self-signed certificate for `localhost` and
    /// `127.0.0.1`, and refusing mail before TLS.
    pub async fn start_tls() -> std::io::Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(std::io::Error::other)?;
        let pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .map_err(std::io::Error::other)?;
        let mut server = Self::launch(None, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await?;
        server.cert_pem = Some(pem);
        Ok(server)
    }

    async fn launch(refuse: Option<u16>, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let tls_used: Arc<Mutex<Vec<bool>>> = Arc::default();
        let (sink, used) = (received.clone(), tls_used.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (sink, used, tls) = (sink.clone(), used.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(sock);
                    let _ = reader.get_mut().write_all(b"220 tidings-test ESMTP ready\r\n").await;
                    let ended = session(&mut reader, &sink, &used, refuse, tls.is_some(), false).await;
                    if let (Ok(Next::StartTls), Some(acceptor)) = (ended, tls) {
                        let Ok(stream) = acceptor.accept(reader.into_inner()).await else {
                            return;
                        };
                        let mut reader = BufReader::new(stream);
                        let _ = session(&mut reader, &sink, &used, refuse, false, true).await;
                    }
                });
            }
        });
        Ok(SmtpServer {
            addr,
            received,
            cert_pem: None,
            tls_used,
            task,
        })
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }
}

/// How a session ended.
enum Next {
    Done,
    StartTls,
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    lines: &mut BufReader<S>,
    sink: &Mutex<Vec<Received>>,
    used: &Mutex<Vec<bool>>,
    refuse: Option<u16>,
    offer_tls: bool,
    in_tls: bool,
) -> std::io::Result<Next> {
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(Next::Done);
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let tls = if offer_tls { "250-STARTTLS\r\n" } else { "" };
            format!("250-tidings-test\r\n{tls}250-8BITMIME\r\n250 SMTPUTF8\r\n")
        } else if upper == "STARTTLS" && offer_tls {
            lines.get_mut().write_all(b"220 go ahead\r\n").await?;
            return Ok(Next::StartTls);
        } else if upper.starts_with("HELO") {
            "250 tidings-test\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            if offer_tls && !in_tls {
                "530 must issue STARTTLS first\r\n".into()
            } else if let Some(code) = refuse {
                format!("{code} refused by test server\r\n")
            } else {
                from = cmd[10..].trim().to_owned();
                "250 OK\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            to.push(cmd[8..].trim().to_owned());
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            lines.get_mut().write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(Next::Done);
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            if let Ok(mut u) = used.lock() {
                u.push(in_tls);
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
            lines.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(Next::Done);
        } else {
            "502 command not implemented\r\n".into()
        };
        lines.get_mut().write_all(reply.as_bytes()).await?;
    }
}
