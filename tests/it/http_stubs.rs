//! Stateful local stubs of the SaaS APIs the shipped HTTP definitions drive. One
//! generic key store; per vendor, a route table with the vendor's published paths,
//! methods, status codes, error bodies, pagination and rate-limit headers.
//!
//! Every request and every answer goes through the vendor's contract
//! (`tests/contracts/<vendor>.json`, `contract.rs`): a request that is not a
//! documented operation, or departs from it (path encoding, parameters, body,
//! credential), is recorded as a violation and answered the way the vendor would
//! (404 or 400); an answer the description does not allow is recorded too. A stub
//! panics when dropped with violations recorded (unless the test already failed),
//! so no test passes against an answer the vendor never gives.
//! `take_violations` is for tests that provoke them on purpose.
//! A stub also refuses what the vendor documents as refused (`refusals` in the
//! contract: a Twilio Standard key on Account and Key resources).
//!
//! A stub runs an axum server on 127.0.0.1 in its own thread and stops when dropped.
//!
//! # Seeding and reading keys (dual providers)
//!
//! Tests put pre-existing keys in a stub and read, from the stub's own state,
//! which keys exist and which are active after a run:
//!
//! ```ignore
//! let stub = Stub::start(Api::Okta);
//! let current = stub.seed_key("0oaAPP1", "secret-the-consumers-use", "console");
//! let attacker = stub.seed_key("0oaAPP1", "secret-the-attacker-made", "ci");
//! let stray = stub.seed_inactive_key("0oaAPP1", "old-secret", "console");
//! // ... rekey run ...
//! assert!(!stub.exists(&attacker));
//! assert_eq!(stub.key(&current).map(|k| k.active), None);
//! let left: Vec<Key> = stub.keys("0oaAPP1");
//! ```
//!
//! The key family (`scope`) of each dual provider:
//!
//! | provider | scope | inactive keys |
//! |---|---|---|
//! | `okta_client_secret` | the app id (`0oaAPP1`) | `INACTIVE` secrets |
//! | `datadog_api_key` / `datadog_app_key` | `dd-api` / `dd-app` (`seed_scoped_key` sets app key scopes) | none: active only |
//! | `sendgrid_api_key` | `sendgrid` (`seed_scoped_key` sets scopes) | none |
//! | `twilio_api_key` | `twilio` (`seed_main_key` makes a Main key) | none |
//! | `github_deploy_key` | `owner/repo` (secret = the public key) | `enabled: false` keys |
//! | `jumpcloud_ssh_key` | the user id (secret = the public key) | none |
//! | `cloudflare_token` | `cloudflare` (user) or `cloudflare-account:<account id>` | `disabled` tokens |
//! | `gitlab_token` | `gitlab` (personal) or `gitlab-project:<project id>` | revoked tokens |
//!
//! `seed_inactive_key` makes a key the vendor reports as inactive where it has
//! that notion, and fails the test where it has none.

use crate::contract::{Contract, Operation, Request, percent_decode};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

pub const ADMIN_TOKEN: &str = "admin-token-7f3a";
pub const DD_API_KEY: &str = "dd-admin-api-key";
pub const TWILIO_AUTH_TOKEN: &str = "twilio-auth-token-99";
pub const TWILIO_ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub const CLOUDFLARE_ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    SendGrid,
    Datadog,
    Twilio,
    GitHub,
    JumpCloud,
    Okta,
    GitLab,
    Cloudflare,
}

impl Api {
    /// The contract file under tests/contracts/.
    pub fn vendor(self) -> &'static str {
        match self {
            Api::SendGrid => "sendgrid",
            Api::Datadog => "datadog",
            Api::Twilio => "twilio",
            Api::GitHub => "github",
            Api::JumpCloud => "jumpcloud",
            Api::Okta => "okta",
            Api::GitLab => "gitlab",
            Api::Cloudflare => "cloudflare",
        }
    }

    /// The path of the vendor's API root, under which the contract's paths lie.
    pub fn base_path(self) -> &'static str {
        match self {
            Api::JumpCloud => "/api",
            Api::GitLab => "/api/v4",
            Api::Cloudflare => "/client/v4",
            _ => "",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    /// The secret (API keys), the public key (SSH keys), or empty.
    pub secret: String,
    pub name: String,
    /// Okta ACTIVE, GitHub `enabled`, GitLab `active`, Cloudflare `active`.
    pub active: bool,
    /// Which key family: `dd-api` / `dd-app` (Datadog), the user id (JumpCloud), ...
    pub scope: String,
    pub created: u64,
    /// Datadog application key and SendGrid key scopes (`None`: unscoped / full access).
    pub scopes: Option<Vec<String>>,
    /// A Twilio Main key (may manage keys); API-made keys are Standard.
    pub main: bool,
    /// GitLab: the user the token belongs to.
    pub owner: u64,
    /// GitLab: the token's expiry date (`YYYY-MM-DD`).
    pub expires_at: Option<String>,
    /// Made (or rolled) through the API by the stub, not seeded: what
    /// `refuse_new` refuses.
    pub issued: bool,
    /// GitLab: when the token last authenticated a request (`last_used_at`).
    pub last_used: Option<u64>,
}

impl Key {
    fn new(id: String, secret: String, name: &str, scope: &str) -> Key {
        Key {
            id,
            secret,
            name: name.to_owned(),
            active: true,
            scope: scope.to_owned(),
            created: now(),
            scopes: None,
            main: false,
            owner: 0,
            expires_at: None,
            issued: false,
            last_used: None,
        }
    }
}

#[derive(Default)]
pub struct State {
    pub keys: Vec<Key>,
    /// JumpCloud users: id → (username, password).
    pub users: HashMap<String, (String, String)>,
    /// GitLab projects: id → path (`group/project`).
    pub projects: HashMap<u64, String>,
    /// GitLab: the user the admin token belongs to, and whether that user is an
    /// instance administrator (then the token lists every user's tokens).
    pub gitlab_admin_user: u64,
    pub gitlab_admin_is_admin: bool,
    /// GitLab: the instance's maximum token lifetime, in days (GitLab's default 365).
    pub gitlab_max_lifetime_days: u64,
    /// Okta: the app's `token_endpoint_auth_method` (default client_secret_basic).
    pub okta_auth_method: HashMap<String, String>,
    pub next: u64,
    /// Verify refuses every key issued through the API (rehearses a rollback).
    pub refuse_new: bool,
    /// Answer "slow down" to this many of the next management requests.
    pub rate_limit_next: u32,
    /// GitHub: answer with a secondary limit (403, retry-after, requests left)
    /// instead of the primary one.
    pub secondary_rate_limit: bool,
    /// GitHub: an organization policy disables every new deploy key.
    pub disable_new: bool,
    /// The next this many answers say the rate-limit window is used up (the
    /// vendor's "remaining" header at 0, its reset 2 s ahead), without refusing.
    pub window_used_up: u32,
    /// Delay before answering verify calls, in milliseconds (lets a test kill
    /// rekey mid-rotation).
    pub verify_delay_ms: u64,
    /// Every request seen, as `METHOD /path?query`.
    pub seen: Vec<String>,
    /// When each request of `seen` arrived.
    pub seen_at: Vec<std::time::Instant>,
    /// Operation ids of the vendor's description that requests matched.
    pub operations: BTreeSet<String>,
    /// Requests and answers that departed from the vendor's description.
    pub violations: Vec<String>,
    /// GitHub Actions secrets: `owner/repo/NAME` or `owner/repo/env/NAME` → sealed value.
    pub actions_secrets: HashMap<String, String>,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", 1000 + self.next)
    }
    pub fn live(&self, scope: &str) -> Vec<&Key> {
        self.keys.iter().filter(|k| k.scope == scope).collect()
    }
}

pub struct Stub {
    pub url: String,
    pub api: Api,
    pub state: Arc<Mutex<State>>,
    /// The private half of the GitHub Actions public key the stub hands out.
    actions_key: crypto_box::SecretKey,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let violations = std::mem::take(&mut self.state.lock().unwrap().violations);
        if !violations.is_empty() && !std::thread::panicking() {
            panic!(
                "the {} stub saw {} departure(s) from the vendor's description:\n  {}",
                self.api.vendor(),
                violations.len(),
                violations.join("\n  ")
            );
        }
    }
}

impl Stub {
    pub fn start(api: Api) -> Stub {
        let state = Arc::new(Mutex::new(State {
            gitlab_admin_user: 1,
            gitlab_max_lifetime_days: 365,
            ..State::default()
        }));
        let actions_key = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        let public = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(actions_key.public_key().as_bytes())
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let state = shared.clone();
                        let public = public.clone();
                        async move { handle(api, &state, &public, method, uri, headers, body).await }
                    },
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = ready_rx.recv().unwrap();
        Stub {
            url: format!("http://{addr}"),
            api,
            state,
            actions_key,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The violations recorded so far, cleared (for tests that provoke them).
    pub fn take_violations(&self) -> Vec<String> {
        self.with(|s| std::mem::take(&mut s.violations))
    }

    /// Adds an active key as if made in the provider's console; returns its id.
    pub fn seed_key(&self, scope: &str, secret: &str, name: &str) -> String {
        self.with(|s| {
            let id = match scope {
                "twilio" => s.id("SK0000000000000000000000000000"),
                _ if scope.starts_with("cloudflare") => {
                    format!(
                        "{:032x}",
                        u128::from(s.next + 1) << 64 | u128::from(rand::random::<u64>())
                    )
                }
                _ => s.id(""),
            };
            let mut k = Key::new(id.clone(), secret.into(), name, scope);
            if scope.starts_with("gitlab") {
                k.owner = scope
                    .strip_prefix("gitlab-project:")
                    .and_then(|p| p.parse::<u64>().ok())
                    .map_or(s.gitlab_admin_user, |p| 9000 + p);
                k.expires_at = Some(date_in_days(30));
            }
            s.keys.push(k);
            id
        })
    }

    /// Adds a key the vendor reports as inactive (Okta INACTIVE, a disabled GitHub
    /// deploy key or Cloudflare token, a revoked GitLab token); returns its id.
    pub fn seed_inactive_key(&self, scope: &str, secret: &str, name: &str) -> String {
        assert!(
            matches!(
                self.api,
                Api::Okta | Api::GitHub | Api::Cloudflare | Api::GitLab
            ),
            "{:?} has no inactive keys",
            self.api
        );
        let id = self.seed_key(scope, secret, name);
        self.with(|s| {
            if let Some(k) = s.keys.iter_mut().find(|k| k.id == id) {
                k.active = false;
            }
        });
        id
    }

    /// Adds a key with scopes (Datadog application keys, SendGrid keys).
    pub fn seed_scoped_key(
        &self,
        scope: &str,
        secret: &str,
        name: &str,
        scopes: &[&str],
    ) -> String {
        let id = self.seed_key(scope, secret, name);
        self.with(|s| {
            if let Some(k) = s.keys.iter_mut().find(|k| k.id == id) {
                k.scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
            }
        });
        id
    }

    /// Adds a Twilio Main key (made in the Console; may manage keys).
    pub fn seed_main_key(&self, secret: &str) -> String {
        let id = self.seed_key("twilio", secret, "main key");
        self.with(|s| {
            if let Some(k) = s.keys.iter_mut().find(|k| k.id == id) {
                k.main = true;
            }
        });
        id
    }

    /// Adds a GitLab token of another user (`owner`), as an instance administrator sees them.
    pub fn seed_gitlab_token(&self, owner: u64, secret: &str, name: &str) -> String {
        let id = self.seed_key("gitlab", secret, name);
        self.with(|s| {
            if let Some(k) = s.keys.iter_mut().find(|k| k.id == id) {
                k.owner = owner;
            }
        });
        id
    }

    /// The key `id` as the stub holds it now (`None`: deleted).
    pub fn key(&self, id: &str) -> Option<Key> {
        self.with(|s| s.keys.iter().find(|k| k.id == id).cloned())
    }

    pub fn exists(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    /// Every key of `scope` the stub holds now, active or not.
    pub fn keys(&self, scope: &str) -> Vec<Key> {
        self.with(|s| s.live(scope).into_iter().cloned().collect())
    }

    /// Opens the GitHub Actions secret stored under `name` (`owner/repo/NAME` or
    /// `owner/repo/env/NAME`) with the stub's private key.
    pub fn open_actions_secret(&self, name: &str) -> Option<String> {
        use base64::Engine as _;
        let sealed = self.with(|s| s.actions_secrets.get(name).cloned())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        String::from_utf8(self.actions_key.unseal(&bytes).ok()?).ok()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn date_in_days(days: u64) -> String {
    rfc3339(now() + days * 86_400)[..10].to_owned()
}

fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 16]>()))
}

fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

/// Twilio's dates: RFC 2822 with a numeric zone.
fn rfc2822(t: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .replace("GMT", "+0000")
}

/// A stub's answer, before it becomes an HTTP response: the contract reads it.
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Reply {
    fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        self.body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default()
    }

    fn into_response(self) -> Response {
        let body = self.bytes();
        let mut r = (StatusCode::from_u16(self.status).unwrap(), body).into_response();
        if self.body.is_some() {
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
        }
        for (k, v) in self.headers {
            r.headers_mut().append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        r
    }
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Some(body),
    }
}

fn empty(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: None,
    }
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn basic(h: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let b = header(h, "authorization").strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn json_body(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Operations that verify a credential (answered after `verify_delay_ms`, never rate limited).
fn is_verify(api: Api, op: &str, h: &HeaderMap) -> bool {
    match api {
        Api::SendGrid => op == "ListScope",
        Api::Datadog => {
            op == "Validate"
                || (op == "GetCurrentUserApplicationKey"
                    && header(h, "dd-application-key") != ADMIN_TOKEN)
        }
        Api::Twilio => op == "ListApplication",
        Api::GitHub => op == "repos/get-deploy-key",
        Api::Okta => op == "tokenCustomAS",
        Api::GitLab => {
            op == "personal_access_tokens/self" && header(h, "private-token") != ADMIN_TOKEN
        }
        Api::Cloudflare => op.ends_with("verify-token"),
        Api::JumpCloud => false,
    }
}

/// The kind of credential a request authenticates with, where the vendor's docs
/// refuse some kinds some operations.
fn credential_kind(api: Api, s: &State, h: &HeaderMap) -> Option<&'static str> {
    match api {
        Api::Twilio => {
            let (user, _) = basic(h)?;
            let key = s
                .keys
                .iter()
                .find(|k| k.scope == "twilio" && k.id == user)?;
            (!key.main).then_some("standard_key")
        }
        _ => None,
    }
}

async fn handle(
    api: Api,
    state: &Mutex<State>,
    actions_public_key: &str,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let full = uri.path().to_owned();
    let path = full
        .strip_prefix(api.base_path())
        .unwrap_or(&full)
        .to_owned();
    let contract = Contract::load(api.vendor());
    {
        let mut s = state.lock().unwrap();
        s.seen.push(format!("{method} {uri}"));
        s.seen_at.push(std::time::Instant::now());
    }
    let request = Request {
        method: method.as_str(),
        path: &path,
        query: uri.query().unwrap_or(""),
        headers: &h,
        body: &body,
    };
    let checked = contract.check_request(&request);
    let op: Option<&Operation> = match &checked {
        Ok(op) => Some(op),
        Err((op, _)) => *op,
    };
    if let Some(op) = op {
        state.lock().unwrap().operations.insert(op.id.clone());
    }
    if let Err((op, violations)) = checked {
        state.lock().unwrap().violations.extend(violations);
        return invalid(api, op.is_some()).into_response();
    }
    let op = op.expect("a documented operation");
    let verify = is_verify(api, &op.id, &h);
    // A slow verify, re-read every 20 ms so a test can release it (and the
    // server can stop) without waiting the whole delay out.
    let started = std::time::Instant::now();
    while verify
        && started.elapsed().as_millis() < u128::from(state.lock().unwrap().verify_delay_ms)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut s = state.lock().unwrap();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let answer = if let Some(status) =
        credential_kind(api, &s, &h).and_then(|kind| contract.refused(kind, op))
    {
        refusal(api, status)
    } else if !verify && s.rate_limit_next > 0 {
        s.rate_limit_next -= 1;
        rate_limited(api, s.secondary_rate_limit)
    } else {
        match api {
            Api::SendGrid => sendgrid(&mut s, &method, &segs, &uri, &h, &body),
            Api::Datadog => datadog(&mut s, &method, &segs, &uri, &h, &body),
            Api::Twilio => twilio(&mut s, &method, &segs, &uri, &h, &body),
            Api::GitHub => github(&mut s, &method, &segs, &uri, &h, &body, actions_public_key),
            Api::JumpCloud => jumpcloud(&mut s, &method, &segs, &uri, &h, &body),
            Api::Okta => okta(&mut s, &method, &segs, &h, &body),
            Api::GitLab => gitlab(&mut s, &method, &segs, &uri, &h, &body),
            Api::Cloudflare => cloudflare(&mut s, &method, &segs, &h),
        }
    };
    let departures = contract.check_response(op, answer.status, &answer.bytes());
    s.violations.extend(departures);
    let answer = if s.window_used_up > 0 {
        s.window_used_up -= 1;
        window_used_up(api, answer)
    } else {
        answer
    };
    answer.into_response()
}

/// The vendor's answer to a request its description does not allow: 404 for an
/// unknown path, 400 (GitHub: 422) for a known one sent wrongly.
fn invalid(api: Api, known_operation: bool) -> Reply {
    let status = match (api, known_operation) {
        (_, false) => 404,
        (Api::GitHub, true) => 422,
        _ => 400,
    };
    reply(
        status,
        json!({"message": "the stub refused a request its vendor does not document"}),
    )
}

/// A documented refusal of a credential kind (Twilio 20003 for a Standard key).
fn refusal(api: Api, status: u16) -> Reply {
    match api {
        Api::Twilio => reply(
            status,
            json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": status}),
        ),
        _ => reply(status, json!({"message": "refused"})),
    }
}

/// Each vendor's documented "slow down" answer.
fn rate_limited(api: Api, secondary: bool) -> Reply {
    let reset_epoch = (now() + 1).to_string();
    match api {
        Api::SendGrid => reply(429, json!({"errors": [{"field": null, "message": "too many requests"}]}))
            .header("X-RateLimit-Limit", "150")
            .header("X-RateLimit-Remaining", "0")
            .header("X-RateLimit-Reset", reset_epoch),
        Api::Datadog => reply(429, json!({"errors": ["Too many requests"]}))
            .header("X-RateLimit-Limit", "60")
            .header("X-RateLimit-Period", "60")
            .header("X-RateLimit-Remaining", "0")
            .header("X-RateLimit-Reset", "1"),
        Api::Twilio => reply(
            429,
            json!({"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}),
        )
        .header("Retry-After", "1"),
        // Secondary limits: 403 with retry-after while requests are left in the
        // primary window (docs: rate-limits-for-the-rest-api).
        Api::GitHub if secondary => reply(
            403,
            json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.", "documentation_url": "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits"}),
        )
        .header("retry-after", "1")
        .header("x-ratelimit-limit", "5000")
        .header("x-ratelimit-remaining", "4321")
        .header("x-ratelimit-reset", (now() + 3000).to_string()),
        Api::GitHub => reply(
            403,
            json!({"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}),
        )
        .header("x-ratelimit-limit", "5000")
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", reset_epoch),
        Api::Okta => reply(
            429,
            json!({"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests.", "errorLink": "E0000047", "errorId": "oae1", "errorCauses": []}),
        )
        .header("X-Rate-Limit-Limit", "100")
        .header("X-Rate-Limit-Remaining", "0")
        .header("X-Rate-Limit-Reset", reset_epoch),
        Api::GitLab => reply(429, json!({"message": "429 Too Many Requests"}))
            .header("RateLimit-Limit", "2000")
            .header("RateLimit-Remaining", "0")
            .header("RateLimit-Reset", reset_epoch)
            .header("Retry-After", "1"),
        Api::Cloudflare => reply(
            429,
            json!({"success": false, "errors": [{"code": 10000, "message": "Rate limited. Please wait and consider throttling your request speed"}], "messages": [], "result": null}),
        )
        .header("Retry-After", "1"),
        Api::JumpCloud => reply(429, json!({"message": "Too Many Requests"})).header("Retry-After", "1"),
    }
}

/// The vendor's rate-limit headers on an answer, saying no request is left in
/// the window and it resets in 2 seconds.
fn window_used_up(api: Api, answer: Reply) -> Reply {
    let at = (now() + 2).to_string();
    match api {
        Api::Okta => answer
            .header("X-Rate-Limit-Limit", "100")
            .header("X-Rate-Limit-Remaining", "0")
            .header("X-Rate-Limit-Reset", at),
        Api::GitLab => answer
            .header("RateLimit-Limit", "2000")
            .header("RateLimit-Remaining", "0")
            .header("RateLimit-Reset", at),
        Api::Datadog => answer
            .header("X-RateLimit-Limit", "60")
            .header("X-RateLimit-Period", "60")
            .header("X-RateLimit-Remaining", "0")
            .header("X-RateLimit-Reset", "2"),
        Api::SendGrid => answer
            .header("X-RateLimit-Limit", "150")
            .header("X-RateLimit-Remaining", "0")
            .header("X-RateLimit-Reset", at),
        Api::GitHub => answer
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", at),
        _ => answer,
    }
}

fn remove(
    s: &mut State,
    scope: &str,
    id: &str,
    answer: Reply,
    missing: impl FnOnce() -> Reply,
) -> Reply {
    let before = s.keys.len();
    s.keys.retain(|k| !(k.scope == scope && k.id == id));
    if s.keys.len() == before {
        missing()
    } else {
        answer
    }
}

// ---- SendGrid: /v3/api_keys, /v3/scopes ---------------------------------------

fn sendgrid(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let error = |status: u16, field: Option<&str>, message: &str| {
        reply(
            status,
            json!({"errors": [{"field": field, "message": message}]}),
        )
    };
    let bearer = header(h, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .to_owned();
    if segs == ["v3", "scopes"] && *m == Method::GET {
        return match s
            .keys
            .iter()
            .find(|k| k.secret == bearer && k.scope == "sendgrid")
        {
            Some(k) if !(s.refuse_new && k.issued) => {
                let scopes = k.scopes.clone().unwrap_or_else(|| {
                    vec![
                        "api_keys.read".into(),
                        "mail.send".into(),
                        "user.profile.read".into(),
                    ]
                });
                reply(200, json!({ "scopes": scopes }))
            }
            _ => error(401, None, "authorization required"),
        };
    }
    if bearer != ADMIN_TOKEN {
        return error(401, None, "authorization required");
    }
    match (m.clone(), segs) {
        (Method::GET, ["v3", "api_keys"]) => {
            let limit: usize = query(uri)
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(50);
            let result: Vec<Value> = s
                .live("sendgrid")
                .iter()
                .take(limit)
                .map(|k| json!({"api_key_id": k.id, "name": k.name}))
                .collect();
            reply(200, json!({ "result": result }))
        }
        (Method::GET, ["v3", "api_keys", id]) => {
            match s.keys.iter().find(|k| k.scope == "sendgrid" && k.id == *id) {
                Some(k) => reply(
                    200,
                    json!({"result": [{"api_key_id": k.id, "name": k.name, "scopes": k.scopes.clone().unwrap_or_default()}]}),
                ),
                None => error(404, None, "unable to find API key"),
            }
        }
        (Method::POST, ["v3", "api_keys"]) => {
            let b = json_body(body);
            let Some(name) = b["name"].as_str().filter(|n| !n.is_empty()) else {
                return error(400, Some("name"), "missing required argument");
            };
            if s.live("sendgrid").len() >= 100 {
                return error(403, None, "cannot exceed 100 api keys");
            }
            let id = format!("sgk{}", s.id(""));
            let secret = random_secret("SG.");
            let mut k = Key::new(id.clone(), secret.clone(), name, "sendgrid");
            k.issued = true;
            // No `scopes` is a Full Access key (CreateApiKey's description).
            k.scopes = b["scopes"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
            let scopes = k
                .scopes
                .clone()
                .unwrap_or_else(|| vec!["full access".into()]);
            s.keys.push(k);
            reply(
                201,
                json!({"api_key": secret, "api_key_id": id, "name": name, "scopes": scopes}),
            )
        }
        (Method::DELETE, ["v3", "api_keys", id]) => remove(s, "sendgrid", id, empty(204), || {
            error(404, None, "unable to find API key")
        }),
        _ => error(404, None, "not found"),
    }
}

// ---- Datadog: /api/v2/api_keys, /api/v2/current_user/application_keys, /api/v1/validate

fn datadog(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let forbidden = || reply(403, json!({"errors": ["Forbidden"]}));
    let api_key = header(h, "dd-api-key").to_owned();
    let app_key = header(h, "dd-application-key").to_owned();
    let valid = |s: &State, scope: &str, v: &str| {
        v == DD_API_KEY && scope == "dd-api"
            || s.keys
                .iter()
                .any(|k| k.scope == scope && k.secret == v && !(s.refuse_new && k.issued))
    };
    if segs == ["api", "v1", "validate"] {
        return if valid(s, "dd-api", &api_key) {
            reply(200, json!({"valid": true}))
        } else {
            forbidden()
        };
    }
    if !valid(s, "dd-api", &api_key) {
        return forbidden();
    }
    let (scope, kind, rest) = match segs {
        ["api", "v2", "api_keys", rest @ ..] => ("dd-api", "api_keys", rest),
        ["api", "v2", "current_user", "application_keys", rest @ ..] => {
            ("dd-app", "application_keys", rest)
        }
        _ => return reply(404, json!({"errors": ["Not found"]})),
    };
    // Every application-key endpoint needs the `user_app_keys` permission
    // (x-permission in the description); a scoped key has only its scopes.
    let caller = s
        .keys
        .iter()
        .find(|k| k.scope == "dd-app" && k.secret == app_key)
        .cloned();
    let may_manage_own = app_key == ADMIN_TOKEN
        || caller.as_ref().is_some_and(|k| {
            !(s.refuse_new && k.issued)
                && k.scopes
                    .as_ref()
                    .is_none_or(|sc| sc.iter().any(|x| x == "user_app_keys"))
        });
    let self_read = scope == "dd-app" && *m == Method::GET && rest.len() == 1;
    if !(app_key == ADMIN_TOKEN || self_read && may_manage_own) {
        return forbidden();
    }
    let item = |k: &Key| {
        let mut attributes = json!({"name": k.name, "created_at": rfc3339(k.created), "last4": &k.secret[k.secret.len() - 4..]});
        if kind == "application_keys" {
            attributes["scopes"] = json!(k.scopes);
        }
        json!({"type": kind, "id": k.id, "attributes": attributes})
    };
    match (m.clone(), rest) {
        (Method::GET, []) => {
            let q = query(uri);
            let size: usize = q
                .get("page[size]")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            let number: usize = q
                .get("page[number]")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let all: Vec<Value> = s.live(scope).iter().map(|k| item(k)).collect();
            let page: Vec<Value> = all.iter().skip(size * number).take(size).cloned().collect();
            reply(
                200,
                json!({"data": page, "meta": {"page": {"total_filtered_count": all.len()}}}),
            )
        }
        (Method::POST, []) => {
            let b = json_body(body);
            let Some(name) = b.pointer("/data/attributes/name").and_then(Value::as_str) else {
                return reply(
                    400,
                    json!({"errors": ["Invalid Parameter: name is required"]}),
                );
            };
            if b.pointer("/data/type").and_then(Value::as_str) != Some(kind) {
                return reply(400, json!({"errors": ["Invalid Parameter: type"]}));
            }
            let id = format!(
                "{:08x}-0000-4000-8000-{:012x}",
                rand::random::<u32>(),
                s.id("").parse::<u64>().unwrap()
            );
            let secret = hex::encode(rand::random::<[u8; 16]>());
            let mut k = Key::new(id, secret.clone(), name, scope);
            k.issued = true;
            if kind == "application_keys" {
                k.scopes = b
                    .pointer("/data/attributes/scopes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    });
            }
            let mut v = item(&k);
            v["attributes"]["key"] = json!(secret);
            s.keys.push(k);
            reply(201, json!({ "data": v }))
        }
        (Method::GET, [id]) => match s.keys.iter().find(|k| k.scope == scope && k.id == *id) {
            Some(k) => reply(200, json!({"data": item(k)})),
            None => reply(404, json!({"errors": ["Application key not found"]})),
        },
        (Method::DELETE, [id]) => remove(s, scope, id, empty(204), || {
            reply(404, json!({"errors": ["Not found"]}))
        }),
        _ => reply(404, json!({"errors": ["Not found"]})),
    }
}

// ---- Twilio: /2010-04-01/Accounts/{AccountSid}/Keys.json ----------------------

fn twilio(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let auth_fail = || {
        reply(
            401,
            json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}),
        )
    };
    let not_found = |p: &str| {
        reply(
            404,
            json!({"code": 20404, "message": format!("The requested resource {p} was not found"), "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}),
        )
    };
    let Some((user, pass)) = basic(h) else {
        return auth_fail();
    };
    // Account SID + Auth Token, or an API key (its SID + secret); Main keys
    // manage keys, Standard keys are refused that by the contract's refusals.
    let account_auth = user == TWILIO_ACCOUNT && pass == TWILIO_AUTH_TOKEN;
    let key_auth = s.keys.iter().any(|k| {
        k.scope == "twilio" && k.id == user && k.secret == pass && !(s.refuse_new && k.issued)
    });
    if !(account_auth || key_auth) {
        return auth_fail();
    }
    let page_of = |q: &HashMap<String, String>| {
        let size: usize = q
            .get("PageSize")
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
            .min(1000);
        let page: usize = q.get("Page").and_then(|v| v.parse().ok()).unwrap_or(0);
        (size, page)
    };
    let account_json = format!("{TWILIO_ACCOUNT}.json");
    match (m.clone(), segs) {
        (Method::GET, ["2010-04-01", "Accounts", acct]) if *acct == account_json => reply(
            200,
            json!({"sid": TWILIO_ACCOUNT, "friendly_name": "rekey test", "status": "active", "type": "Full"}),
        ),
        (
            Method::GET,
            [
                "2010-04-01",
                "Accounts",
                TWILIO_ACCOUNT,
                "Applications.json",
            ],
        ) => {
            let (size, page) = page_of(&query(uri));
            let base = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Applications.json");
            reply(
                200,
                json!({"applications": [], "first_page_uri": format!("{base}?PageSize={size}&Page=0"), "next_page_uri": null, "previous_page_uri": null, "page": page, "page_size": size, "uri": format!("{base}?PageSize={size}&Page={page}"), "end": 0, "start": 0}),
            )
        }
        (Method::GET, ["2010-04-01", "Accounts", TWILIO_ACCOUNT, "Keys.json"]) => {
            let (size, page) = page_of(&query(uri));
            let all: Vec<Value> = s.live("twilio").iter().map(|k| json!({"sid": k.id, "friendly_name": k.name, "date_created": rfc2822(k.created), "date_updated": null})).collect();
            let keys: Vec<Value> = all.iter().skip(size * page).take(size).cloned().collect();
            let base = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Keys.json");
            let next = (all.len() > size * (page + 1)).then(|| {
                format!(
                    "{base}?PageSize={size}&Page={}&PageToken=PASK{}",
                    page + 1,
                    page + 1
                )
            });
            reply(
                200,
                json!({"keys": keys, "first_page_uri": format!("{base}?PageSize={size}&Page=0"), "next_page_uri": next, "previous_page_uri": null, "page": page, "page_size": size, "uri": format!("{base}?PageSize={size}&Page={page}"), "end": keys.len().saturating_sub(1), "start": 0}),
            )
        }
        (Method::POST, ["2010-04-01", "Accounts", TWILIO_ACCOUNT, "Keys.json"]) => {
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(body).into_owned().collect();
            let name = form.get("FriendlyName").cloned().unwrap_or_default();
            let id = format!("SK{}", hex::encode(rand::random::<[u8; 16]>()));
            let secret = random_secret("");
            let mut k = Key::new(id.clone(), secret.clone(), &name, "twilio");
            k.issued = true;
            let date = rfc2822(k.created);
            s.keys.push(k);
            reply(
                201,
                json!({"sid": id, "friendly_name": name, "date_created": date, "date_updated": date, "secret": secret}),
            )
        }
        (Method::DELETE, ["2010-04-01", "Accounts", TWILIO_ACCOUNT, "Keys", file]) => {
            let id = file.trim_end_matches(".json").to_owned();
            let p = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Keys/{file}");
            remove(s, "twilio", &id, empty(204), || not_found(&p))
        }
        _ => not_found(&segs.join("/")),
    }
}

// ---- GitHub: /repos/{owner}/{repo}/keys, /repos/{owner}/{repo}[/environments/{env}]/secrets

fn github(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
    actions_public_key: &str,
) -> Reply {
    let docs = "https://docs.github.com/rest/deploy-keys/deploy-keys";
    let not_found = || {
        reply(
            404,
            json!({"message": "Not Found", "documentation_url": docs, "status": "404"}),
        )
    };
    if header(h, "authorization") != format!("Bearer {ADMIN_TOKEN}") {
        return reply(
            401,
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
        );
    }
    let key_id = "568250167242549743";
    match (m.clone(), segs) {
        (Method::GET, ["repos", _, _, "actions", "secrets", "public-key"])
        | (Method::GET, ["repos", _, _, "environments", _, "secrets", "public-key"]) => {
            return reply(200, json!({"key_id": key_id, "key": actions_public_key}));
        }
        (Method::PUT, ["repos", owner, repo, "actions", "secrets", name])
        | (Method::PUT, ["repos", owner, repo, "environments", _, "secrets", name]) => {
            let b = json_body(body);
            if b["key_id"] != key_id {
                return reply(
                    422,
                    json!({"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest/actions/secrets", "errors": [{"resource": "Secret", "code": "invalid", "field": "key_id"}]}),
                );
            }
            let place = match segs {
                [_, _, _, "environments", env, ..] => format!("{owner}/{repo}/{env}/{name}"),
                _ => format!("{owner}/{repo}/{name}"),
            };
            let sealed = b["encrypted_value"].as_str().unwrap_or_default().to_owned();
            let existed = s.actions_secrets.insert(place, sealed).is_some();
            return if existed {
                empty(204)
            } else {
                reply(201, json!({}))
            };
        }
        _ => {}
    }
    let ["repos", owner, repo, "keys", rest @ ..] = segs else {
        return not_found();
    };
    let scope = format!("{owner}/{repo}");
    let item = |k: &Key| json!({"id": k.id.parse::<u64>().unwrap_or(0), "key": k.secret, "url": format!("https://api.github.com/repos/{scope}/keys/{}", k.id), "title": k.name, "verified": true, "created_at": rfc3339(k.created), "read_only": true, "added_by": "rekey", "last_used": null, "enabled": k.active});
    match (m.clone(), rest) {
        (Method::GET, []) => {
            let q = query(uri);
            let per_page: usize = q
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30)
                .min(100);
            let page: usize = q
                .get("page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1);
            let all: Vec<Value> = s.live(&scope).iter().map(|k| item(k)).collect();
            let items: Vec<Value> = all
                .iter()
                .skip(per_page * (page - 1))
                .take(per_page)
                .cloned()
                .collect();
            let mut r = reply(200, Value::Array(items));
            if all.len() > per_page * page {
                let host = header(h, "host").to_owned();
                r = r.header(
                    "link",
                    format!(
                        "<http://{host}/repos/{scope}/keys?per_page={per_page}&page={}>; rel=\"next\"",
                        page + 1
                    ),
                );
            }
            r
        }
        (Method::POST, []) => {
            let b = json_body(body);
            let key = b["key"].as_str().unwrap_or("").trim().to_owned();
            let valid =
                key.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") || key.starts_with("ssh-rsa ");
            if !valid {
                return reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PublicKey", "code": "custom", "field": "key", "message": "key is invalid. You must supply a key in OpenSSH public key format"}], "documentation_url": docs, "status": "422"}),
                );
            }
            if s.keys.iter().any(|k| k.secret == key) {
                return reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PublicKey", "code": "custom", "field": "key", "message": "key is already in use"}], "documentation_url": docs, "status": "422"}),
                );
            }
            let id = (1000 + s.next + 1).to_string();
            s.next += 1;
            let mut k = Key::new(id, key, b["title"].as_str().unwrap_or(""), &scope);
            k.issued = true;
            k.active = !s.disable_new;
            let v = item(&k);
            s.keys.push(k);
            reply(201, v)
        }
        (Method::GET, [id]) => match s.keys.iter().find(|k| k.scope == scope && k.id == *id) {
            Some(k) => reply(200, item(k)),
            None => not_found(),
        },
        (Method::DELETE, [id]) => remove(s, &scope, id, empty(204), not_found),
        _ => not_found(),
    }
}

// ---- JumpCloud v1: /api/systemusers, /api/systemusers/{id}/sshkeys ----------------

fn jumpcloud(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let not_found = || reply(404, json!({"message": "Not Found"}));
    if header(h, "x-api-key") != ADMIN_TOKEN {
        return reply(401, json!({"message": "Unauthorized"}));
    }
    match (m.clone(), segs) {
        (Method::GET, ["systemusers"]) => {
            let filter = query(uri).get("filter").cloned().unwrap_or_default();
            let wanted = filter.strip_prefix("username:$eq:").map(str::to_owned);
            let results: Vec<Value> = s
                .users
                .iter()
                .filter(|(_, (name, _))| wanted.as_deref().is_none_or(|w| w == name))
                .map(|(id, (name, _))| json!({"_id": id, "id": id, "username": name}))
                .collect();
            reply(
                200,
                json!({"totalCount": results.len(), "results": results}),
            )
        }
        (Method::PUT, ["systemusers", id]) => {
            let b = json_body(body);
            let Some(user) = s.users.get_mut(*id) else {
                return not_found();
            };
            if let Some(p) = b["password"].as_str() {
                if p.len() < 8 {
                    return reply(
                        400,
                        json!({"message": "Password does not meet the organization's requirements"}),
                    );
                }
                user.1 = p.to_owned();
            }
            reply(
                200,
                json!({"_id": id, "id": id, "username": user.0, "password_date": rfc3339(now())}),
            )
        }
        (Method::GET, ["systemusers", id, "sshkeys"]) => {
            if !s.users.contains_key(*id) {
                return not_found();
            }
            let keys: Vec<Value> = s.live(id).iter().map(|k| json!({"_id": k.id, "name": k.name, "public_key": k.secret, "create_date": rfc3339(k.created)})).collect();
            reply(200, Value::Array(keys))
        }
        (Method::POST, ["systemusers", id, "sshkeys"]) => {
            if !s.users.contains_key(*id) {
                return not_found();
            }
            let b = json_body(body);
            let (Some(name), Some(key)) = (b["name"].as_str(), b["public_key"].as_str()) else {
                return reply(400, json!({"message": "name and public_key are required"}));
            };
            let kid = format!("5f{}", hex::encode(rand::random::<[u8; 11]>()));
            let mut k = Key::new(kid.clone(), key.trim().into(), name, id);
            k.issued = true;
            let v = json!({"_id": kid, "name": k.name, "public_key": k.secret, "create_date": rfc3339(k.created)});
            s.keys.push(k);
            reply(200, v)
        }
        // The v1 description documents 200 with a string body for a delete.
        (Method::DELETE, ["systemusers", id, "sshkeys", kid]) => {
            remove(s, id, kid, reply(200, json!("")), not_found)
        }
        _ => not_found(),
    }
}

// ---- Okta: /api/v1/apps/{appId}/credentials/secrets, /oauth2/{server}/v1/token ----

fn okta(s: &mut State, m: &Method, segs: &[&str], h: &HeaderMap, body: &Bytes) -> Reply {
    let err = |status: u16, code: &str, summary: &str| {
        reply(
            status,
            json!({"errorCode": code, "errorSummary": summary, "errorLink": code, "errorId": format!("oae{}", hex::encode(rand::random::<[u8; 4]>())), "errorCauses": []}),
        )
    };
    if let ["oauth2", _server, "v1", "token"] = segs {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let invalid = || {
            reply(
                401,
                json!({"error": "invalid_client", "error_description": "The client secret supplied for a confidential client is invalid."}),
            )
        };
        // The client authenticates the way its app is configured, and only that way.
        let (method, presented) = match (basic(h), form.get("client_id"), form.get("client_secret"))
        {
            (Some(pair), _, _) => ("client_secret_basic", pair),
            (None, Some(id), Some(secret)) => ("client_secret_post", (id.clone(), secret.clone())),
            _ => return invalid(),
        };
        let (client, secret) = presented;
        let configured = s
            .okta_auth_method
            .get(&client)
            .map(String::as_str)
            .unwrap_or("client_secret_basic");
        if method != configured {
            return invalid();
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return reply(
                400,
                json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}),
            );
        }
        let ok = s.keys.iter().any(|k| {
            k.scope == client && k.secret == secret && k.active && !(s.refuse_new && k.issued)
        });
        return if ok {
            reply(
                200,
                json!({"token_type": "Bearer", "expires_in": 3600, "access_token": "eyJ.stub.token", "scope": form.get("scope")}),
            )
        } else {
            invalid()
        };
    }
    if header(h, "authorization") != format!("SSWS {ADMIN_TOKEN}") {
        return err(401, "E0000011", "Invalid token provided");
    }
    let [
        "api",
        "v1",
        "apps",
        app,
        "credentials",
        "secrets",
        rest @ ..,
    ] = segs
    else {
        return err(404, "E0000007", "Not found: Resource not found");
    };
    let item = |k: &Key| json!({"id": k.id, "status": if k.active { "ACTIVE" } else { "INACTIVE" }, "client_secret": k.secret, "secret_hash": hex::encode(&k.secret.as_bytes()[..6]), "created": rfc3339(k.created), "lastUpdated": rfc3339(k.created), "_links": {}});
    match (m.clone(), rest) {
        (Method::GET, []) => reply(
            200,
            Value::Array(s.live(app).iter().map(|k| item(k)).collect()),
        ),
        (Method::POST, []) => {
            if s.live(app).len() >= 2 {
                return err(
                    400,
                    "E0000001",
                    "Api validation failed: Maximum number of client secrets reached",
                );
            }
            let mut k = Key::new(
                format!("ocs{}", hex::encode(rand::random::<[u8; 8]>())),
                random_secret(""),
                "api",
                app,
            );
            k.issued = true;
            let v = item(&k);
            s.keys.push(k);
            reply(201, v)
        }
        (Method::POST, [id, "lifecycle", "deactivate"]) => {
            if s.live(app).iter().filter(|k| k.active).count() == 1
                && s.live(app).iter().any(|k| k.id == *id && k.active)
            {
                return err(
                    400,
                    "E0000001",
                    "Api validation failed: You can't deactivate the only secret of the client",
                );
            }
            match s.keys.iter_mut().find(|k| k.scope == *app && k.id == *id) {
                Some(k) => {
                    k.active = false;
                    let v = item(k);
                    reply(200, v)
                }
                None => err(404, "E0000007", "Not found: Resource not found"),
            }
        }
        (Method::DELETE, [id]) => match s.keys.iter().find(|k| k.scope == *app && k.id == *id) {
            Some(k) if k.active => err(
                400,
                "E0000001",
                "Api validation failed: Cannot delete an active client secret",
            ),
            Some(_) => remove(s, app, id, empty(204), || err(404, "E0000007", "Not found")),
            None => err(404, "E0000007", "Not found: Resource not found"),
        },
        _ => err(404, "E0000007", "Not found: Resource not found"),
    }
}

// ---- GitLab: /api/v4/personal_access_tokens, /api/v4/projects/:id/access_tokens ----

fn gitlab(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let token = header(h, "private-token").to_owned();
    let message =
        |status: u16, text: &str| reply(status, json!({ "message": format!("{status} {text}") }));
    let item = |k: &Key| json!({"id": k.id.parse::<u64>().unwrap_or(0), "name": k.name, "revoked": !k.active, "created_at": rfc3339(k.created), "description": null, "scopes": ["api"], "user_id": k.owner, "last_used_at": k.last_used.map(rfc3339), "active": k.active, "expires_at": k.expires_at});
    if segs == ["personal_access_tokens", "self"] && *m == Method::GET {
        if token == ADMIN_TOKEN {
            return reply(
                200,
                json!({"id": 1, "name": "rekey-admin", "revoked": false, "created_at": rfc3339(now()), "description": null, "scopes": ["api"], "user_id": s.gitlab_admin_user, "last_used_at": null, "active": true, "expires_at": date_in_days(300)}),
            );
        }
        let refuse_new = s.refuse_new;
        return match s
            .keys
            .iter_mut()
            .find(|k| k.scope.starts_with("gitlab") && k.secret == token && k.active)
        {
            Some(k) if !(refuse_new && k.issued) => {
                // GitLab records when a token authenticates (`last_used_at`).
                k.last_used = Some(now());
                reply(200, item(k))
            }
            _ => message(401, "Unauthorized"),
        };
    }
    if token != ADMIN_TOKEN {
        return message(401, "Unauthorized");
    }
    let admin_user = s.gitlab_admin_user;
    let is_admin = s.gitlab_admin_is_admin;
    let visible =
        |k: &Key| is_admin || k.owner == admin_user || k.scope.starts_with("gitlab-project:");
    let project_scope = |s: &State, id: &str| -> Option<String> {
        let pid = id
            .parse::<u64>()
            .ok()
            .filter(|p| s.projects.contains_key(p))
            .or_else(|| {
                s.projects
                    .iter()
                    .find(|(_, path)| path.as_str() == id)
                    .map(|(p, _)| *p)
            })?;
        Some(format!("gitlab-project:{pid}"))
    };
    let (scope, rest): (String, &[&str]) = match segs {
        ["personal_access_tokens", rest @ ..] => ("gitlab".into(), rest),
        ["projects", id, "access_tokens", rest @ ..] => match project_scope(s, id) {
            Some(scope) => (scope, rest),
            None => return message(404, "Project Not Found"),
        },
        _ => return message(404, "Not found"),
    };
    match (m.clone(), rest) {
        (Method::GET, []) => {
            let q = query(uri);
            // Non-administrators may filter by their own user only.
            if let Some(uid) = q.get("user_id")
                && !is_admin
                && uid != &admin_user.to_string()
            {
                return message(401, "Unauthorized");
            }
            let per_page: usize = q
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20)
                .min(100);
            let page: usize = q
                .get("page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1);
            let all: Vec<Value> = s
                .live(&scope)
                .into_iter()
                .filter(|k| visible(k))
                .filter(|k| q.get("user_id").is_none_or(|u| u == &k.owner.to_string()))
                .filter(|k| q.get("state").is_none_or(|st| (st == "active") == k.active))
                .filter(|k| q.get("search").is_none_or(|n| k.name.contains(n.as_str())))
                .map(item)
                .collect();
            let items: Vec<Value> = all
                .iter()
                .skip(per_page * (page - 1))
                .take(per_page)
                .cloned()
                .collect();
            let mut r = reply(200, Value::Array(items));
            if all.len() > per_page * page {
                let host = header(h, "host").to_owned();
                let mut next = url::Url::parse(&format!("http://{host}{}", uri.path())).unwrap();
                {
                    let mut pairs = next.query_pairs_mut();
                    for (k, v) in q.iter().filter(|(k, _)| k.as_str() != "page") {
                        pairs.append_pair(k, v);
                    }
                    pairs.append_pair("page", &(page + 1).to_string());
                }
                r = r.header("link", format!("<{next}>; rel=\"next\""));
            }
            r
        }
        // One token by id, revoked ones too (GitLab keeps their record). A
        // token the admin may not see, or none: 401, or 404 for an administrator.
        (Method::GET, [id]) => match s
            .keys
            .iter()
            .find(|k| k.scope == scope && k.id == *id && visible(k))
        {
            Some(k) => reply(200, item(k)),
            None if is_admin || scope != "gitlab" => message(404, "Not found"),
            None => message(401, "Unauthorized"),
        },
        (Method::POST, [id, "rotate"]) => {
            let b = json_body(body);
            let max = date_in_days(s.gitlab_max_lifetime_days);
            let expires_at = match b["expires_at"].as_str() {
                Some(d) if d.len() != 10 => {
                    return message(400, "Bad request - expires_at is invalid");
                }
                Some(d) if d > max.as_str() => {
                    return reply(
                        400,
                        json!({"message": format!("Expiration date must be before {max}")}),
                    );
                }
                Some(d) => d.to_owned(),
                None => date_in_days(7),
            };
            let Some(old) = s.keys.iter_mut().find(|k| {
                k.scope == scope
                    && k.id == *id
                    && (is_admin || k.owner == admin_user || k.scope != "gitlab")
            }) else {
                return message(404, "Not found");
            };
            if !old.active {
                return message(400, "Bad request - Token already revoked");
            }
            old.active = false;
            let (name, owner) = (old.name.clone(), old.owner);
            let new_id = (s.next + 100).to_string();
            s.next += 1;
            let mut k = Key::new(new_id, random_secret("glpat-"), &name, &scope);
            k.owner = owner;
            k.expires_at = Some(expires_at);
            k.issued = true;
            let mut v = item(&k);
            v["token"] = json!(k.secret);
            s.keys.push(k);
            reply(200, v)
        }
        _ => message(404, "Not found"),
    }
}

// ---- Cloudflare: /client/v4/{user,accounts/{id}}/tokens/{id}/value, .../tokens/verify ----

fn cloudflare(s: &mut State, m: &Method, segs: &[&str], h: &HeaderMap) -> Reply {
    let bearer = header(h, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .to_owned();
    let fail = |status: u16, code: u32, msg: &str| {
        reply(
            status,
            json!({"success": false, "errors": [{"code": code, "message": msg}], "messages": [], "result": null}),
        )
    };
    let (scope, rest): (String, &[&str]) = match segs {
        ["user", "tokens", rest @ ..] => ("cloudflare".into(), rest),
        ["accounts", account, "tokens", rest @ ..] => {
            (format!("cloudflare-account:{account}"), rest)
        }
        _ => return fail(404, 7000, "No route for that URI"),
    };
    if rest == ["verify"] {
        // A token verifies only where it is owned: a user token at /user, an
        // account token at its account (docs: an account token gets 401 at /user).
        return match s
            .keys
            .iter()
            .find(|k| k.scope == scope && k.secret == bearer)
        {
            Some(k) if !(s.refuse_new && k.issued) => reply(
                200,
                json!({"success": true, "errors": [], "messages": [{"code": 10000, "message": "This API Token is valid and active"}], "result": {"id": k.id, "status": if k.active { "active" } else { "disabled" }}}),
            ),
            _ => fail(401, 1000, "Invalid API Token"),
        };
    }
    if bearer != ADMIN_TOKEN {
        return fail(401, 10000, "Authentication error");
    }
    match (m.clone(), rest) {
        (Method::PUT, [id, "value"]) => {
            match s.keys.iter_mut().find(|k| k.scope == scope && k.id == *id) {
                Some(k) => {
                    k.secret = format!(
                        "{}{}",
                        hex::encode(rand::random::<[u8; 16]>()),
                        hex::encode(rand::random::<[u8; 4]>())
                    );
                    k.issued = true;
                    reply(
                        200,
                        json!({"success": true, "errors": [], "messages": [], "result": k.secret}),
                    )
                }
                None => fail(404, 1003, "Invalid token id"),
            }
        }
        _ => fail(404, 7000, "No route for that URI"),
    }
}
