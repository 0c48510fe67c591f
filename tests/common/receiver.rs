//! A real HTTP receiver for the connectors that push (webhook, onvif): it answers each request
//! from a script (200 once the script runs out) and records every request, with the status it
//! answered and when.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
    pub at: Instant,
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// This status, no body.
    Status(u16),
    /// This status with a `Retry-After` of so many seconds.
    RetryAfter(u16, u64),
    /// 200, after this long.
    Slow(Duration),
    /// This status with a SOAP 1.2 fault as the body (what an ONVIF consumer answers).
    SoapFault(u16),
}

const SOAP_FAULT: &str = r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value></env:Code><env:Reason><env:Text xml:lang="en">consumer busy</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;

/// A real HTTP server on `addr` that answers from a script and records requests; [`url`]
/// is its address with `path` (it answers every path).
///
/// [`url`]: Receiver::url
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    path: &'static str,
    log: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    pub cancel: CancellationToken,
}

impl Receiver {
    pub async fn start(addr: &str, path: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            path,
            log: Default::default(),
            script: Default::default(),
            cancel: CancellationToken::new(),
        };
        let rr = r.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let rr = rr.clone();
                async move { rr.answer(method, uri, headers, body).await }
            },
        );
        let cancel = r.cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
                .unwrap();
        });
        r
    }

    async fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let reply = self.script.lock().unwrap().pop_front();
        let status = match reply {
            None | Some(Reply::Slow(_)) => 200,
            Some(Reply::Status(s) | Reply::RetryAfter(s, _) | Reply::SoapFault(s)) => s,
        };
        self.log.lock().unwrap().push(Request {
            method: method.to_string(),
            uri: uri.to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
            at: Instant::now(),
        });
        let code = StatusCode::from_u16(status).unwrap();
        match reply {
            None | Some(Reply::Status(_)) => code.into_response(),
            Some(Reply::RetryAfter(_, secs)) => {
                (code, [("retry-after", secs.to_string())]).into_response()
            }
            Some(Reply::Slow(d)) => {
                tokio::time::sleep(d).await;
                code.into_response()
            }
            Some(Reply::SoapFault(_)) if code.is_success() => code.into_response(),
            Some(Reply::SoapFault(_)) => (
                code,
                [("content-type", "application/soap+xml; charset=utf-8")],
                SOAP_FAULT,
            )
                .into_response(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// How the next requests are answered, in order; 200 after them.
    pub fn script(&self, replies: &[Reply]) {
        self.script.lock().unwrap().extend(replies.iter().copied());
    }

    /// Forgets the replies not used yet: 200 from now on.
    pub fn clear_script(&self) {
        self.script.lock().unwrap().clear();
    }
}
