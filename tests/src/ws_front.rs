//! The WebSocket door of an IoT Hub double: a TLS listener on 127.0.0.1:0 that reads each
//! client's HTTP upgrade request, records its path and `Sec-WebSocket-Protocol`, answers
//! 404 (as the hub does) when the path is not the hub's, and otherwise relays the request and
//! everything after it, untouched, to a plain websockets listener of mosquitto, which
//! completes the upgrade and carries MQTT. mosquitto itself takes any path: this is where
//! the path is checked.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One upgrade request as the front saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    /// `Sec-WebSocket-Protocol` (MQTT over WebSockets asks for `mqtt`).
    pub protocol: Option<String>,
    /// The path was the hub's: relayed.
    pub accepted: bool,
}

pub struct WsFront {
    pub port: u16,
    upgrades: Arc<Mutex<Vec<Upgrade>>>,
}

impl WsFront {
    /// Listens with `tls`; relays requests for `path` to mosquitto's plain websockets
    /// listener on `upstream`.
    pub async fn start(upstream: u16, tls: Arc<rustls::ServerConfig>, path: &str) -> WsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upgrades: Arc<Mutex<Vec<Upgrade>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (u2, path) = (upgrades.clone(), path.to_owned());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upgrades, acceptor, path) = (u2.clone(), acceptor.clone(), path.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(client).await {
                        serve(tls, upstream, &path, upgrades).await;
                    }
                });
            }
        });
        WsFront { port, upgrades }
    }

    /// Every upgrade request so far, in order.
    pub fn upgrades(&self) -> Vec<Upgrade> {
        self.upgrades.lock().unwrap().clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    upstream: u16,
    path: &str,
    upgrades: Arc<Mutex<Vec<Upgrade>>>,
) {
    // The request head (16 KiB at most); what follows it in the same read is relayed too.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let Ok(n) = client.read(&mut buf).await else {
            return;
        };
        if n == 0 || head.len() > 16 << 10 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return;
    };
    let mut lines = text.split("\r\n");
    let requested = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let protocol = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-protocol")
            .then(|| value.trim().to_owned())
    });
    let accepted = requested == path;
    upgrades.lock().unwrap().push(Upgrade {
        path: requested,
        protocol,
        accepted,
    });
    if !accepted {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        let _ = client.shutdown().await;
        return;
    }
    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = broker.set_nodelay(true);
    if broker.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
}
