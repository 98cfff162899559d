//! Extra places each audit line goes after it is in the file: stdout, or an HTTP
//! endpoint (a SIEM collector). The file is the record; sinks are copies. A sink
//! never blocks a write nor makes one fail: the HTTP sink hands lines to a
//! background thread that posts them with retries, and says at the end of the
//! run how many it could not deliver (they are all in the file).

use crate::secret::Secret;
use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

/// How long, at the end of a run, the HTTP sink may keep trying to deliver.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Lines posted in one request at most.
const BATCH: usize = 200;
/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where else lines go.
pub enum Sink {
    Stdout,
    Http(HttpSink),
}

impl Sink {
    /// Parses `--audit-sink`: `stdout`, or an `http://` / `https://` URL.
    pub fn parse(spec: &str, authorization: Option<Secret>) -> Result<Sink, String> {
        if spec == "stdout" || spec == "-" {
            return Ok(Sink::Stdout);
        }
        if spec.starts_with("https://") || spec.starts_with("http://") {
            // The lines name what was rotated, and the Authorization header rides
            // along: the same rule as every endpoint that gets a credential.
            crate::net::parse_endpoint(spec)
                .map_err(|why| format!("audit sink `{spec}`: {why}"))?;
            return HttpSink::start(spec, authorization).map(Sink::Http);
        }
        Err(format!(
            "`{spec}` is not an audit sink: use `stdout` or an http(s):// URL (a SIEM collector)"
        ))
    }

    pub(super) fn send(&mut self, line: &str) {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|_| out.flush());
            }
            Sink::Http(h) => h.send(line),
        }
    }
}

enum Message {
    Line(String),
    Drain,
}

/// Posts lines (`application/x-ndjson`, one or more per request) from a
/// background thread, retrying with capped exponential backoff.
pub struct HttpSink {
    url: String,
    tx: Option<mpsc::Sender<Message>>,
    done: mpsc::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpSink {
    fn start(url: &str, authorization: Option<Secret>) -> Result<HttpSink, String> {
        let client = reqwest::Client::builder()
            .redirect(crate::net::redirect_policy())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|_| format!("cannot build an HTTP client for the audit sink `{url}`"))?;
        let (tx, rx) = mpsc::channel::<Message>();
        let (done_tx, done) = mpsc::channel();
        let target = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("audit-http".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let lost = runtime.block_on(deliver(client, target, authorization, rx));
                let _ = done_tx.send(lost);
            })
            .map_err(|e| format!("cannot start the audit sink thread: {e}"))?;
        Ok(HttpSink {
            url: url.to_owned(),
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }

    fn send(&mut self, line: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Line(line.to_owned()));
        }
    }
}

impl Drop for HttpSink {
    /// Gives the thread until the deadline to deliver what is queued, then says
    /// how many lines did not reach the collector.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Message::Drain);
        }
        match self.done.recv_timeout(DRAIN_DEADLINE + REQUEST_TIMEOUT) {
            Ok(0) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Ok(lost) => {
                tracing::warn!(sink = %self.url, lines = lost, "Audit lines not delivered to the collector; the trail file holds them all (send them with `rekey audit export`).");
            }
            Err(_) => {
                tracing::warn!(sink = %self.url, "The audit collector did not answer in time; some lines may not have reached it. The trail file holds them all.");
            }
        }
    }
}

/// The delivery loop: batches what is queued, posts it, retries failures with
/// backoff. After `Drain`, keeps trying until the deadline; returns how many lines
/// were not delivered.
async fn deliver(
    client: reqwest::Client,
    url: String,
    authorization: Option<Secret>,
    rx: mpsc::Receiver<Message>,
) -> u64 {
    let mut queue: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut draining: Option<tokio::time::Instant> = None;
    let mut delay = Duration::from_millis(200);
    loop {
        // Take what is waiting; block only when there is nothing to send.
        loop {
            let msg = if queue.is_empty() && draining.is_none() {
                // This thread serves only the sink: blocking it is fine.
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => Some(Message::Drain),
                }
            } else {
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        draining
                            .get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_DEADLINE);
                        None
                    }
                }
            };
            match msg {
                Some(Message::Line(l)) => queue.push_back(l),
                Some(Message::Drain) => {
                    draining.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_DEADLINE);
                }
                None => break,
            }
        }
        if queue.is_empty() {
            if draining.is_some() {
                return 0;
            }
            continue;
        }
        if draining.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return queue.len() as u64;
        }
        let n = queue.len().min(BATCH);
        let mut body = String::new();
        for l in queue.iter().take(n) {
            body.push_str(l);
            body.push('\n');
        }
        let mut request = client
            .post(&url)
            .header("Content-Type", "application/x-ndjson")
            .body(body);
        if let Some(a) = &authorization {
            request = request.header("Authorization", a.expose());
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                queue.drain(..n);
                delay = Duration::from_millis(200);
            }
            answer => {
                // Messages from the status only: a collector's body may echo the
                // request's headers.
                let why = match answer {
                    Ok(r) => format!("HTTP {}", r.status().as_u16()),
                    Err(e) if e.is_timeout() => "timed out".into(),
                    Err(e) if e.is_connect() => "cannot connect".into(),
                    Err(_) => "request failed".into(),
                };
                tracing::debug!(sink = %url, lines = n, "Audit sink delivery failed ({why}); retrying.");
                let wait = match draining {
                    Some(d) => delay.min(d.saturating_duration_since(tokio::time::Instant::now())),
                    None => delay,
                };
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
