//! A webhook receiver on a real HTTP server that verifies every request exactly as a Standard
//! Webhooks consumer does: recompute HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}"
//! with the base64-decoded secret after `whsec_`, compare with each `v1,` signature, and
//! refuse timestamps more than five minutes off.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// Answers 500.
    Fail,
    /// Answers after 30 s (longer than any test's webhook timeout).
    Hang,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub body: serde_json::Value,
    pub at: tokio::time::Instant,
}

#[derive(Debug)]
struct State {
    /// Every subscription's secret that points here.
    secrets: Vec<String>,
    mode: Mode,
    received: Vec<Received>,
    bad_signatures: usize,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
}

pub fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
    fresh
        && header
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .any(|s| s == expected)
}

async fn hook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let mode = {
        let mut s = state.lock().unwrap();
        assert!(!s.secrets.is_empty(), "the test sets the secret first");
        if !s.secrets.iter().any(|k| verify(k, &id, &ts, &body, &sig)) {
            s.bad_signatures += 1;
            return HttpResponse::BadRequest().finish();
        }
        s.mode
    };
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            HttpResponse::Ok().finish()
        }
        Mode::Fail => HttpResponse::InternalServerError().finish(),
        Mode::Accept => {
            let mut s = state.lock().unwrap();
            s.received.push(Received {
                id,
                body: serde_json::from_slice(&body).unwrap(),
                at: tokio::time::Instant::now(),
            });
            HttpResponse::NoContent().finish()
        }
    }
}

impl Receiver {
    pub async fn start(mode: Mode, cancel: tokio_util::sync::CancellationToken) -> Self {
        let state = Arc::new(Mutex::new(State {
            secrets: Vec::new(),
            mode,
            received: Vec::new(),
            bad_signatures: 0,
        }));
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hook", web::post().to(hook))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        tokio::spawn(async move {
            cancel.cancelled().await;
            handle.stop(false).await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
        }
    }

    /// Trusts one more subscription's secret.
    pub fn set_secret(&self, secret: &str) {
        self.state.lock().unwrap().secrets.push(secret.to_owned());
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }

    /// Waits until a delivery of `event_type` arrived.
    pub async fn wait_for(&self, event_type: &str, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(r) = self
                .received()
                .into_iter()
                .find(|r| r.body["type"] == event_type)
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {event_type} within {within:?}; got {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
