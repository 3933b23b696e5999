//! A small WebSocket test client speaking the Tidings frames (JSON or MessagePack), built on
//! tokio-tungstenite, with every receive bounded by a timeout.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default receive timeout.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A Tidings frame, decoded to JSON whatever its wire format.
    Frame(Value),
    /// A close frame: code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

/// How to present the token.
#[derive(Debug, Clone)]
pub enum TokenIn {
    /// `?token=`.
    Query(String),
    /// `Authorization: Bearer`.
    Header(String),
    /// None at connect time (send an `auth` frame, or nothing).
    None,
}

/// One client connection.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    msgpack: bool,
}

impl WsClient {
    /// Connects to `base` (`http://host:port`) `/ws` with a token and optional subprotocol.
    pub async fn connect(base: &str, token: TokenIn, protocol: Option<&str>) -> Result<Self, WsError> {
        Self::connect_with(base, token, protocol, None).await
    }

    /// As [`WsClient::connect`], with a socket receive buffer of `recv_buffer` bytes (a tiny
    /// buffer makes a client that stops reading look slow to the server quickly).
    /// The HTTP status a refused upgrade answered with (token in the query), or `None` if
    /// the upgrade succeeded or failed without an HTTP answer.
    pub async fn refused_status(base: &str, token: &str) -> Option<u16> {
        match Self::connect(base, TokenIn::Query(token.to_owned()), None).await {
            Err(WsError::Http(resp)) => Some(resp.status().as_u16()),
            _ => None,
        }
    }
    pub async fn connect_with(
        base: &str,
        token: TokenIn,
        protocol: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> Result<Self, WsError> {
        let ws_base = base.replacen("http://", "ws://", 1);
        let url = match &token {
            TokenIn::Query(t) => format!("{ws_base}/ws?token={t}"),
            _ => format!("{ws_base}/ws"),
        };
        let mut req = url.as_str().into_client_request()?;
        if let TokenIn::Header(t) = &token {
            let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| WsError::Io(std::io::Error::other(e)))?;
            req.headers_mut().insert("authorization", v);
        }
        if let Some(p) = protocol {
            let v = HeaderValue::from_str(p).map_err(|e| WsError::Io(std::io::Error::other(e)))?;
            req.headers_mut().insert("sec-websocket-protocol", v);
        }
        let addr = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            sock.set_recv_buffer_size(size)?;
        }
        let resolved = tokio::net::lookup_host(&addr)
            .await?
            .next()
            .ok_or_else(|| WsError::Io(std::io::Error::other("no address")))?;
        let stream = sock.connect(resolved).await?;
        let (socket, _resp) = tokio_tungstenite::client_async_with_config(
            req,
            MaybeTlsStream::Plain(stream),
            Some(WebSocketConfig::default()),
        )
        .await?;
        Ok(WsClient {
            socket,
            msgpack: protocol == Some("tidings.v1.msgpack"),
        })
    }

    /// Sends a frame given as JSON (encoded as MessagePack on a MessagePack connection).
    pub async fn send(&mut self, frame: Value) -> Result<(), WsError> {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&frame).unwrap_or_default().into())
        } else {
            Message::Text(frame.to_string().into())
        };
        self.socket.send(msg).await
    }

    /// Sends raw text (for malformed-input tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.socket.send(Message::Text(text.to_owned().into())).await
    }

    /// Sends raw bytes as a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), WsError> {
        self.socket.send(Message::Binary(bytes.into())).await
    }

    /// Sends a WebSocket ping control frame.
    pub async fn send_ping(&mut self) -> Result<(), WsError> {
        self.socket.send(Message::Ping(Vec::new().into())).await
    }

    /// The next Tidings frame or close, within `timeout`; `None` on timeout.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()?;
            return Some(match next {
                None | Some(Err(_)) => Incoming::Ended,
                Some(Ok(Message::Text(t))) => Incoming::Frame(serde_json::from_str(t.as_str()).unwrap_or(Value::Null)),
                Some(Ok(Message::Binary(b))) => Incoming::Frame(rmp_serde::from_slice(&b).unwrap_or(Value::Null)),
                Some(Ok(Message::Close(c))) => match c {
                    Some(f) => Incoming::Close(f.code.into(), f.reason.to_string()),
                    None => Incoming::Close(1005, String::new()),
                },
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next item within [`RECV_TIMEOUT`]; panics on timeout.
    pub async fn recv(&mut self) -> Incoming {
        match self.recv_timeout(RECV_TIMEOUT).await {
            Some(i) => i,
            None => panic!("nothing received within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next frame; panics on a close or timeout.
    pub async fn frame(&mut self) -> Value {
        match self.recv().await {
            Incoming::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Skips frames until one of `type` arrives; panics on a close or timeout.
    pub async fn frame_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.frame().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Waits for the close frame (skipping frames); returns its code, or 0 if the connection
    /// ended without one.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            match self.recv().await {
                Incoming::Close(code, _) => return code,
                Incoming::Ended => return 0,
                Incoming::Frame(_) => {}
            }
        }
    }

    /// Sends a command with `id` and returns its reply (skipping other frames).
    pub async fn request(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = Value::from(id);
        if let Err(e) = self.send(frame).await {
            panic!("send failed: {e}");
        }
        loop {
            let f = self.frame().await;
            if (f["type"] == "reply" || f["type"] == "pong") && f["id"] == id {
                return f;
            }
        }
    }

    /// Subscribes and asserts success.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .request(serde_json::json!({"type":"subscribe","channel":channel}), 900_001)
            .await;
        assert_eq!(reply["ok"], true, "subscribe {channel}: {reply}");
        reply
    }
}
