//! Stateful local stubs of the SaaS APIs the shipped HTTP definitions drive. One
//! generic key store; per provider, a route table with the provider's published
//! paths, methods, status codes, error bodies, pagination and rate-limit headers
//! (each cited in the provider's file under providers/). A stub runs an axum
//! server on 127.0.0.1 in its own thread and stops when dropped.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const ADMIN_TOKEN: &str = "admin-token-7f3a";
pub const DD_API_KEY: &str = "dd-admin-api-key";
pub const TWILIO_AUTH_TOKEN: &str = "twilio-auth-token-99";
pub const TWILIO_ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

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

#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    /// The secret (API keys), the public key (SSH keys), or empty.
    pub secret: String,
    pub name: String,
    pub active: bool,
    /// Which key family: `api` / `app` (Datadog), the user id (JumpCloud), ...
    pub scope: String,
    pub created: u64,
}

#[derive(Default)]
pub struct State {
    pub keys: Vec<Key>,
    /// JumpCloud users: id → (username, password).
    pub users: HashMap<String, (String, String)>,
    pub next: u64,
    /// Verify refuses every key created through the API (rehearses a rollback).
    pub refuse_new: bool,
    /// Answer 429 to this many of the next management requests.
    pub rate_limit_next: u32,
    /// Delay before answering verify calls, in milliseconds (lets a test kill
    /// rekey mid-rotation).
    pub verify_delay_ms: u64,
    /// Every request seen, as `METHOD /path?query`.
    pub seen: Vec<String>,
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
    pub state: Arc<Mutex<State>>,
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
    }
}

impl Stub {
    pub fn start(api: Api) -> Stub {
        let state = Arc::new(Mutex::new(State::default()));
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
                        async move { handle(api, &state, method, uri, headers, body).await }
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
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Adds a key as if made in the provider's console; returns its id.
    pub fn seed_key(&self, scope: &str, secret: &str, name: &str) -> String {
        self.with(|s| {
            let id = s.id(match scope {
                "twilio" => "SK0000000000000000000000000000",
                _ => "",
            });
            s.keys.push(Key {
                id: id.clone(),
                secret: secret.into(),
                name: name.into(),
                active: true,
                scope: scope.into(),
                created: now(),
            });
            id
        })
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 16]>()))
}

fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn empty(status: u16) -> Response {
    StatusCode::from_u16(status).unwrap().into_response()
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

async fn handle(
    api: Api,
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_verify = match api {
        Api::SendGrid => path == "/v3/scopes",
        Api::Datadog => path == "/api/v1/validate" || (method == Method::GET && segs.len() == 5),
        Api::Twilio => segs.len() == 3,
        Api::GitHub => method == Method::GET && segs.len() == 5,
        Api::Okta => path.starts_with("/oauth2/"),
        Api::GitLab => path.ends_with("/self"),
        Api::Cloudflare => path.ends_with("/verify"),
        Api::JumpCloud => false,
    };
    state.lock().unwrap().seen.push(format!("{method} {uri}"));
    // A slow verify, re-read every 20 ms so a test can release it (and the
    // server can stop) without waiting the whole delay out.
    let started = std::time::Instant::now();
    while is_verify
        && started.elapsed().as_millis() < u128::from(state.lock().unwrap().verify_delay_ms)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut s = state.lock().unwrap();
    if !is_verify && s.rate_limit_next > 0 {
        s.rate_limit_next -= 1;
        return rate_limited(api);
    }
    match api {
        Api::SendGrid => sendgrid(&mut s, &method, &segs, &uri, &h, &body),
        Api::Datadog => datadog(&mut s, &method, &segs, &uri, &h, &body),
        Api::Twilio => twilio(&mut s, &method, &segs, &uri, &h, &body),
        Api::GitHub => github(&mut s, &method, &segs, &uri, &h, &body),
        Api::JumpCloud => jumpcloud(&mut s, &method, &segs, &uri, &h, &body),
        Api::Okta => okta(&mut s, &method, &segs, &h, &body),
        Api::GitLab => gitlab(&mut s, &method, &segs, &h, &body),
        Api::Cloudflare => cloudflare(&mut s, &method, &segs, &h),
    }
}

/// Each provider's documented "slow down" answer.
fn rate_limited(api: Api) -> Response {
    let reset_epoch = (now() + 1).to_string();
    let (body, headers): (Value, Vec<(&str, String)>) = match api {
        Api::SendGrid => (
            json!({"errors": [{"field": null, "message": "too many requests"}]}),
            vec![
                ("X-RateLimit-Limit", "150".into()),
                ("X-RateLimit-Remaining", "0".into()),
                ("X-RateLimit-Reset", reset_epoch),
            ],
        ),
        Api::Datadog => (
            json!({"errors": ["Too many requests"]}),
            vec![
                ("X-RateLimit-Limit", "60".into()),
                ("X-RateLimit-Period", "60".into()),
                ("X-RateLimit-Remaining", "0".into()),
                ("X-RateLimit-Reset", "1".into()),
            ],
        ),
        Api::Twilio => (
            json!({"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}),
            vec![("Retry-After", "1".into())],
        ),
        Api::GitHub => {
            return (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-limit", "5000".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", reset_epoch),
                    ("content-type", "application/json".to_owned()),
                ],
                json!({"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}).to_string(),
            )
                .into_response();
        }
        Api::Okta => (
            json!({"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests.", "errorLink": "E0000047", "errorId": "oae1", "errorCauses": []}),
            vec![
                ("X-Rate-Limit-Limit", "100".into()),
                ("X-Rate-Limit-Remaining", "0".into()),
                ("X-Rate-Limit-Reset", reset_epoch),
            ],
        ),
        Api::GitLab => (
            json!({"message": "429 Too Many Requests"}),
            vec![
                ("RateLimit-Limit", "2000".into()),
                ("RateLimit-Remaining", "0".into()),
                ("RateLimit-Reset", reset_epoch),
                ("Retry-After", "1".into()),
            ],
        ),
        Api::Cloudflare => (
            json!({"success": false, "errors": [{"code": 10000, "message": "Rate limited. Please wait and consider throttling your request speed"}], "messages": [], "result": null}),
            vec![("Retry-After", "1".into())],
        ),
        Api::JumpCloud => (
            json!({"message": "Too Many Requests"}),
            vec![("Retry-After", "1".into())],
        ),
    };
    let mut r = reply(429, body);
    for (k, v) in headers {
        r.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    r
}

// ---- SendGrid: /v3/api_keys, /v3/scopes ---------------------------------------

fn sendgrid(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Response {
    let unauthorized = || {
        reply(
            401,
            json!({"errors": [{"field": null, "message": "authorization required"}]}),
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
            Some(k) if !(s.refuse_new && k.name.starts_with("rekey:")) => {
                reply(200, json!({"scopes": ["mail.send"]}))
            }
            _ => unauthorized(),
        };
    }
    if bearer != ADMIN_TOKEN {
        return unauthorized();
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
        (Method::POST, ["v3", "api_keys"]) => {
            let b = json_body(body);
            let Some(name) = b["name"].as_str().filter(|n| !n.is_empty()) else {
                return reply(
                    400,
                    json!({"errors": [{"field": "name", "message": "missing required argument"}]}),
                );
            };
            if s.live("sendgrid").len() >= 100 {
                return reply(
                    403,
                    json!({"errors": [{"field": null, "message": "cannot exceed 100 api keys"}]}),
                );
            }
            let id = format!("sgk{}", s.id(""));
            let secret = random_secret("SG.");
            s.keys.push(Key {
                id: id.clone(),
                secret: secret.clone(),
                name: name.into(),
                active: true,
                scope: "sendgrid".into(),
                created: now(),
            });
            reply(
                201,
                json!({"api_key": secret, "api_key_id": id, "name": name, "scopes": b["scopes"]}),
            )
        }
        (Method::DELETE, ["v3", "api_keys", id]) => remove(s, "sendgrid", id, 204, || {
            reply(
                404,
                json!({"errors": [{"field": null, "message": "unable to find API key"}]}),
            )
        }),
        _ => reply(
            404,
            json!({"errors": [{"field": null, "message": "not found"}]}),
        ),
    }
}

fn remove(
    s: &mut State,
    scope: &str,
    id: &str,
    status: u16,
    missing: impl FnOnce() -> Response,
) -> Response {
    let before = s.keys.len();
    s.keys.retain(|k| !(k.scope == scope && k.id == id));
    if s.keys.len() == before {
        missing()
    } else {
        empty(status)
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
) -> Response {
    let forbidden = || reply(403, json!({"errors": ["Forbidden"]}));
    let api_key = header(h, "dd-api-key").to_owned();
    let app_key = header(h, "dd-application-key").to_owned();
    let valid = |s: &State, scope: &str, v: &str| {
        v == DD_API_KEY && scope == "dd-api"
            || s.keys.iter().any(|k| {
                k.scope == scope && k.secret == v && !(s.refuse_new && k.name.starts_with("rekey:"))
            })
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
    // Key management needs an application key; a GET of one app key by itself is
    // how the new app key proves it works.
    let self_check = scope == "dd-app" && *m == Method::GET && rest.len() == 1;
    if !self_check && app_key != ADMIN_TOKEN {
        return forbidden();
    }
    let item = |k: &Key| json!({"type": kind, "id": k.id, "attributes": {"name": k.name, "created_at": rfc3339(k.created), "last4": &k.secret[k.secret.len() - 4..]}});
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
            let k = Key {
                id,
                secret: secret.clone(),
                name: name.into(),
                active: true,
                scope: scope.into(),
                created: now(),
            };
            let mut v = item(&k);
            v["attributes"]["key"] = json!(secret);
            s.keys.push(k);
            reply(201, json!({ "data": v }))
        }
        (Method::GET, [id]) => match s.keys.iter().find(|k| k.scope == scope && k.id == *id) {
            Some(k) if valid(s, "dd-app", &app_key) || app_key == ADMIN_TOKEN => {
                reply(200, json!({"data": item(k)}))
            }
            Some(_) => forbidden(),
            None => reply(404, json!({"errors": ["Application key not found"]})),
        },
        (Method::DELETE, [id]) => remove(s, scope, id, 204, || {
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
) -> Response {
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
    let account_json = format!("{TWILIO_ACCOUNT}.json");
    match (m.clone(), segs) {
        (Method::GET, ["2010-04-01", "Accounts", acct]) if *acct == account_json => {
            let key_ok = s.keys.iter().any(|k| {
                k.scope == "twilio"
                    && k.id == user
                    && k.secret == pass
                    && !(s.refuse_new && k.name.starts_with("rekey:"))
            });
            if key_ok || (user == TWILIO_ACCOUNT && pass == TWILIO_AUTH_TOKEN) {
                reply(
                    200,
                    json!({"sid": TWILIO_ACCOUNT, "friendly_name": "rekey test", "status": "active", "type": "Full"}),
                )
            } else {
                auth_fail()
            }
        }
        _ if !(user == TWILIO_ACCOUNT && pass == TWILIO_AUTH_TOKEN) => auth_fail(),
        (Method::GET, ["2010-04-01", "Accounts", TWILIO_ACCOUNT, "Keys.json"]) => {
            let q = query(uri);
            let size: usize = q
                .get("PageSize")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50)
                .min(1000);
            let page: usize = q.get("Page").and_then(|v| v.parse().ok()).unwrap_or(0);
            let all: Vec<Value> = s.live("twilio").iter().map(|k| json!({"sid": k.id, "friendly_name": k.name, "date_created": httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(k.created)).replace("GMT", "+0000"), "date_updated": null})).collect();
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
            if header(h, "content-type") != "application/x-www-form-urlencoded" {
                return reply(
                    400,
                    json!({"code": 20001, "message": "Invalid content type", "status": 400}),
                );
            }
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(body).into_owned().collect();
            let name = form.get("FriendlyName").cloned().unwrap_or_default();
            let id = format!("SK{}", hex::encode(rand::random::<[u8; 16]>()));
            let secret = random_secret("");
            let created = now();
            s.keys.push(Key {
                id: id.clone(),
                secret: secret.clone(),
                name: name.clone(),
                active: true,
                scope: "twilio".into(),
                created,
            });
            let date = httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(created),
            )
            .replace("GMT", "+0000");
            reply(
                201,
                json!({"sid": id, "friendly_name": name, "date_created": date, "date_updated": date, "secret": secret}),
            )
        }
        (Method::DELETE, ["2010-04-01", "Accounts", TWILIO_ACCOUNT, "Keys", file]) => {
            let id = file.trim_end_matches(".json").to_owned();
            let p = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Keys/{file}");
            remove(s, "twilio", &id, 204, || not_found(&p))
        }
        _ => not_found(&segs.join("/")),
    }
}

// ---- GitHub: /repos/{owner}/{repo}/keys -----------------------------------------

fn github(
    s: &mut State,
    m: &Method,
    segs: &[&str],
    uri: &Uri,
    h: &HeaderMap,
    body: &Bytes,
) -> Response {
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
    let ["repos", owner, repo, "keys", rest @ ..] = segs else {
        return not_found();
    };
    let scope = format!("{owner}/{repo}");
    let item = |k: &Key| json!({"id": k.id.parse::<u64>().unwrap_or(0), "key": k.secret, "url": format!("https://api.github.com/repos/{scope}/keys/{}", k.id), "title": k.name, "verified": true, "created_at": rfc3339(k.created), "read_only": true, "added_by": "rekey", "last_used": null, "enabled": true});
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
                let link = format!(
                    "<http://{host}/repos/{scope}/keys?per_page={per_page}&page={}>; rel=\"next\"",
                    page + 1
                );
                r.headers_mut()
                    .insert("link", HeaderValue::from_str(&link).unwrap());
            }
            r
        }
        (Method::POST, []) => {
            let b = json_body(body);
            let key = b["key"].as_str().unwrap_or("").trim().to_owned();
            let valid =
                key.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") || key.starts_with("ssh-rsa ");
            if !valid || !b["read_only"].is_boolean() && !b["read_only"].is_null() {
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
            let k = Key {
                id,
                secret: key,
                name: b["title"].as_str().unwrap_or("").into(),
                active: true,
                scope: scope.clone(),
                created: now(),
            };
            let v = item(&k);
            s.keys.push(k);
            reply(201, v)
        }
        (Method::GET, [id]) => match s.keys.iter().find(|k| k.scope == scope && k.id == *id) {
            Some(k) => reply(200, item(k)),
            None => not_found(),
        },
        (Method::DELETE, [id]) => remove(s, &scope, id, 204, not_found),
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
) -> Response {
    let not_found = || reply(404, json!({"message": "Not Found"}));
    if header(h, "x-api-key") != ADMIN_TOKEN {
        return reply(401, json!({"message": "Unauthorized"}));
    }
    match (m.clone(), segs) {
        (Method::GET, ["api", "systemusers"]) => {
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
        (Method::PUT, ["api", "systemusers", id]) => {
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
        (Method::GET, ["api", "systemusers", id, "sshkeys"]) => {
            if !s.users.contains_key(*id) {
                return not_found();
            }
            let keys: Vec<Value> = s.live(id).iter().map(|k| json!({"_id": k.id, "name": k.name, "public_key": k.secret, "create_date": rfc3339(k.created)})).collect();
            reply(200, Value::Array(keys))
        }
        (Method::POST, ["api", "systemusers", id, "sshkeys"]) => {
            if !s.users.contains_key(*id) {
                return not_found();
            }
            let b = json_body(body);
            let (Some(name), Some(key)) = (b["name"].as_str(), b["public_key"].as_str()) else {
                return reply(400, json!({"message": "name and public_key are required"}));
            };
            let kid = format!("5f{}", hex::encode(rand::random::<[u8; 11]>()));
            let k = Key {
                id: kid.clone(),
                secret: key.trim().into(),
                name: name.into(),
                active: true,
                scope: id.to_string(),
                created: now(),
            };
            let v = json!({"_id": kid, "name": k.name, "public_key": k.secret, "create_date": rfc3339(k.created)});
            s.keys.push(k);
            reply(200, v)
        }
        (Method::DELETE, ["api", "systemusers", id, "sshkeys", kid]) => {
            remove(s, id, kid, 204, not_found)
        }
        _ => not_found(),
    }
}

// ---- Okta: /api/v1/apps/{appId}/credentials/secrets, /oauth2/{server}/v1/token ----

fn okta(s: &mut State, m: &Method, segs: &[&str], h: &HeaderMap, body: &Bytes) -> Response {
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
        let Some((client, secret)) = basic(h) else {
            return invalid();
        };
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return reply(
                400,
                json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}),
            );
        }
        let ok = s.keys.iter().any(|k| {
            k.scope == client
                && k.secret == secret
                && k.active
                && !(s.refuse_new && k.name.starts_with("api"))
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
            let k = Key {
                id: format!("ocs{}", hex::encode(rand::random::<[u8; 8]>())),
                secret: random_secret(""),
                name: "api".into(),
                active: true,
                scope: app.to_string(),
                created: now(),
            };
            let v = item(&k);
            s.keys.push(k);
            reply(201, v)
        }
        (Method::POST, [id, "lifecycle", "deactivate"]) => {
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
            Some(_) => remove(s, app, id, 204, || empty(404)),
            None => err(404, "E0000007", "Not found: Resource not found"),
        },
        _ => err(404, "E0000007", "Not found: Resource not found"),
    }
}

// ---- GitLab: /api/v4/personal_access_tokens ----------------------------------

fn gitlab(s: &mut State, m: &Method, segs: &[&str], h: &HeaderMap, body: &Bytes) -> Response {
    let token = header(h, "private-token").to_owned();
    let unauthorized = || reply(401, json!({"message": "401 Unauthorized"}));
    let item = |k: &Key| json!({"id": k.id.parse::<u64>().unwrap_or(0), "name": k.name, "revoked": !k.active, "created_at": rfc3339(k.created), "scopes": ["api"], "user_id": 7, "last_used_at": null, "active": k.active, "expires_at": "2030-01-01"});
    if segs == ["api", "v4", "personal_access_tokens", "self"] {
        return match s
            .keys
            .iter()
            .find(|k| k.scope == "gitlab" && k.secret == token && k.active)
        {
            Some(k) if !(s.refuse_new && k.created == u64::MAX - 1) => reply(200, item(k)),
            _ => unauthorized(),
        };
    }
    if token != ADMIN_TOKEN {
        return unauthorized();
    }
    match (m.clone(), segs) {
        (Method::GET, ["api", "v4", "personal_access_tokens"]) => {
            let list: Vec<Value> = s
                .live("gitlab")
                .iter()
                .filter(|k| k.active)
                .map(|k| item(k))
                .collect();
            reply(200, Value::Array(list))
        }
        (Method::POST, ["api", "v4", "personal_access_tokens", id, "rotate"]) => {
            let b = json_body(body);
            if b["expires_at"].as_str().is_some_and(|d| d.len() != 10) {
                return reply(
                    400,
                    json!({"message": "400 Bad request - expires_at is invalid"}),
                );
            }
            let Some(old) = s
                .keys
                .iter_mut()
                .find(|k| k.scope == "gitlab" && k.id == *id)
            else {
                return reply(404, json!({"message": "404 Not found"}));
            };
            if !old.active {
                return reply(
                    400,
                    json!({"message": "400 Bad request - Token already revoked"}),
                );
            }
            old.active = false;
            let name = old.name.clone();
            let new_id = (s.next + 100).to_string();
            s.next += 1;
            let created = if s.refuse_new { u64::MAX - 1 } else { now() };
            let k = Key {
                id: new_id,
                secret: random_secret("glpat-"),
                name,
                active: true,
                scope: "gitlab".into(),
                created,
            };
            let mut v = item(&k);
            v["token"] = json!(k.secret);
            s.keys.push(k);
            reply(200, v)
        }
        _ => reply(404, json!({"message": "404 Not found"})),
    }
}

// ---- Cloudflare: /client/v4/user/tokens/{id}/value, /client/v4/user/tokens/verify ----

fn cloudflare(s: &mut State, m: &Method, segs: &[&str], h: &HeaderMap) -> Response {
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
    if segs == ["client", "v4", "user", "tokens", "verify"] {
        return match s
            .keys
            .iter()
            .find(|k| k.scope == "cloudflare" && k.secret == bearer)
        {
            Some(k) if !(s.refuse_new && k.name == "rolled") => reply(
                200,
                json!({"success": true, "errors": [], "messages": [{"code": 10000, "message": "This API Token is valid and active"}], "result": {"id": k.id, "status": "active"}}),
            ),
            _ => fail(401, 1000, "Invalid API Token"),
        };
    }
    if bearer != ADMIN_TOKEN {
        return fail(401, 10000, "Authentication error");
    }
    match (m.clone(), segs) {
        (Method::PUT, ["client", "v4", "user", "tokens", id, "value"]) => {
            match s
                .keys
                .iter_mut()
                .find(|k| k.scope == "cloudflare" && k.id == *id)
            {
                Some(k) => {
                    k.secret = random_secret("cf-");
                    k.name = "rolled".into();
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
