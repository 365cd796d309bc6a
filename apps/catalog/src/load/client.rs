//! A minimal HTTP/1.1 client: one keep-alive connection, reconnected after
//! an error. The load generator runs one per simulated user, so it must
//! cost the machine as little as possible.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest a single request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed request (no response).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad base URL {0:?}: expected http://HOST:PORT")]
    Url(String),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// A response, body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// One connection to a catalog (or any HTTP/1.1 server).
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    authority: String,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    /// A client for `base` (`http://127.0.0.1:3000`); connects lazily.
    pub async fn new(base: &str) -> Result<HttpClient, ClientError> {
        let authority = base
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| ClientError::Url(base.to_owned()))?
            .to_owned();
        let addr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: authority.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ClientError::Url(base.to_owned()))?;
        let host =
            HeaderValue::from_str(&authority).map_err(|_| ClientError::Url(base.to_owned()))?;
        Ok(HttpClient {
            addr,
            authority,
            host,
            sender: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let sender = self.open().await?;
            self.sender = Some(sender);
        }
        match self.sender.as_mut() {
            Some(sender) => Ok(sender),
            None => Err(ClientError::Url(self.authority.clone())),
        }
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream =
            TcpStream::connect(self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.authority.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes or the sender is dropped.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put_json(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        self.send(Method::PUT, path, Some(("application/json", body.into())))
            .await
    }

    /// Any request; `body` is (content type, bytes).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Response, ClientError> {
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, self.send_once(method, path, body)).await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    async fn send_once(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Response, ClientError> {
        let host = self.host.clone();
        let sender = self.connect().await?;
        sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Response { status, body })
    }
}
