//! The device side of IoT Hub's HTTPS API as a test double: a TLS listener on 127.0.0.1:0
//! that takes HTTP/1.1 `POST /devices/{id}/messages/events?api-version=...` with a SAS token
//! in `Authorization` (checked with [`crate::front::sas_check`] against the device key), answers
//! 204, and records every request with its headers and body, and every connection with when
//! it was opened and closed. `set_down(true)`: connections are closed at once (an outage).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Index of its connection in [`HttpsHub::connections`].
    pub connection: usize,
    pub status: u16,
}

impl Post {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// (opened, closed) of one TLS connection.
pub type Span = (Instant, Option<Instant>);

pub struct HttpsHub {
    pub port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    connections: Arc<Mutex<Vec<Span>>>,
    down: Arc<AtomicBool>,
}

impl HttpsHub {
    /// Serves `device` of `host`, whose SAS tokens are signed with `key`.
    pub async fn start(
        tls: Arc<rustls::ServerConfig>,
        host: &str,
        device: &str,
        key: &str,
    ) -> HttpsHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hub = HttpsHub {
            port,
            posts: Arc::default(),
            connections: Arc::default(),
            down: Arc::default(),
        };
        let (posts, connections, down) =
            (hub.posts.clone(), hub.connections.clone(), hub.down.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let resource = format!("{host}/devices/{device}");
        let path = format!("/devices/{device}/messages/events");
        let key = key.to_owned();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                if down.load(Ordering::Relaxed) {
                    drop(socket);
                    continue;
                }
                let (posts, connections) = (posts.clone(), connections.clone());
                let (acceptor, resource, path, key) = (
                    acceptor.clone(),
                    resource.clone(),
                    path.clone(),
                    key.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let index = {
                        let mut c = connections.lock().unwrap();
                        c.push((Instant::now(), None));
                        c.len() - 1
                    };
                    let mut stream = BufReader::new(tls);
                    while let Some(mut post) = read_request(&mut stream, index).await {
                        let authorized = post.header("authorization").is_some_and(|t| {
                            crate::front::sas_check(t, &resource, &key, crate::front::now_s())
                                .is_ok()
                        });
                        post.status = match (
                            post.path.split('?').next() == Some(path.as_str()),
                            authorized,
                        ) {
                            (false, _) => 404,
                            (true, false) => 401,
                            (true, true) => 204,
                        };
                        let answer = format!(
                            "HTTP/1.1 {} {}\r\ncontent-length: 0\r\n\r\n",
                            post.status,
                            if post.status == 204 {
                                "No Content"
                            } else {
                                "Refused"
                            }
                        );
                        posts.lock().unwrap().push(post);
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    connections.lock().unwrap()[index].1 = Some(Instant::now());
                });
            }
        });
        hub
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Every request so far.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The bodies of the accepted (204) requests.
    pub fn accepted(&self) -> Vec<Vec<u8>> {
        self.posts()
            .into_iter()
            .filter(|p| p.status == 204)
            .map(|p| p.body)
            .collect()
    }

    pub fn connections(&self) -> Vec<Span> {
        self.connections.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request (request line, headers, a body of content-length); `None` at the end
/// of the connection or on anything else.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    connection: usize,
) -> Option<Post> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?, parts.next()?.to_owned());
    if method != "POST" {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Post {
        path,
        headers,
        body,
        connection,
        status: 0,
    })
}
