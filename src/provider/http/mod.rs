//! Declarative HTTP providers: a provider file's `http:` section (see
//! providers/README.md) drives a provider's REST API with templated requests.
//!
//! - `crate::catalog::http`: the section's types and its validation (positions and
//!   hints), done when the catalog loads the file.
//! - `crate::catalog::template`: minijinja rendering, secrets as opaque values, the
//!   base-URL fence.
//! - `sshkey`: Ed25519 key pairs for providers that take a public key.
//!
//! Every request goes under the instance's base URL (no redirects followed, no
//! path that could leave it); answers are classified into `ProviderError`s from
//! their status and rate-limit headers, never from their bodies, so no message
//! can echo a secret.

pub mod sshkey;

use super::admin::Admin;
use super::{Issued, KeyInfo, Provider, ProviderError, Target};
use crate::catalog::http::{
    self as definition, AuthDef, CallDef, Definition, Generate, Paginate, ResetFormat, Scheme,
};
use crate::catalog::template::{self, Context};
use crate::catalog::{Need, ProviderType};
use crate::playbook::ProviderInstance;
use crate::secret::Secret;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most pages a list or lookup follows: far above any real account's keys, and a
/// guard against a provider (or stub) that always says there is a next page.
const MAX_PAGES: usize = 100;
/// Longest wait a rate-limit header may ask for before rekey treats it as an error.
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub struct HttpProvider {
    def: Arc<Definition>,
    instance: String,
    base: url::Url,
    quota: Option<u32>,
    /// Every setting the catalog declares, null when unset, then the instance's.
    settings: serde_json::Map<String, Value>,
    admin: Option<Admin>,
    client: reqwest::Client,
    /// What the rate-limit headers said on the latest answer (see `rate_hint`).
    last_hint: std::sync::Mutex<Option<crate::provider::RateHint>>,
}

/// What a call's answer means.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Expected,
    Gone,
    Refused,
}

struct Answer {
    seen: Seen,
    headers: HeaderMap,
    body: Value,
}

impl HttpProvider {
    /// Builds the driver for `instance` of the HTTP type `t`. Connects to nothing.
    pub fn build(
        instance: &ProviderInstance,
        t: &ProviderType,
        admin: Option<Admin>,
    ) -> Result<HttpProvider, ProviderError> {
        let def = t
            .http_definition()
            .map_err(|report| {
                ProviderError::Fatal(format!(
                    "the http definition of `{}` is invalid:\n{report}",
                    t.name
                ))
            })?
            .ok_or_else(|| {
                ProviderError::Fatal(format!("provider type `{}` has no http definition", t.name))
            })?;
        let mut settings = serde_json::Map::new();
        for k in t.settings.keys().chain(t.credential_settings.keys()) {
            settings.insert(k.clone(), Value::Null);
        }
        for (k, v) in &instance.settings {
            settings.insert(k.clone(), v.clone());
        }
        let fatal =
            |m: String| ProviderError::Fatal(format!("provider instance `{}`: {m}", instance.name));
        let base_text = match instance.settings.get("base_url").and_then(Value::as_str) {
            Some(b) => b.to_owned(),
            None => {
                let cx = Context {
                    settings: settings.clone(),
                    ..Context::default()
                };
                let rendered = template::render(&def.http.base_url, &cx)
                    .map_err(|e| fatal(format!("cannot render base_url: {e}")))?;
                // Only the host may come from settings: the rest must be as written.
                let written_path = def.http.base_url.trim_start_matches("https://");
                let written_path = written_path
                    .find('/')
                    .map(|i| &written_path[i..])
                    .unwrap_or("");
                let rendered_rest = rendered.trim_start_matches("https://");
                let host = rendered_rest.strip_suffix(written_path).unwrap_or("/");
                if host.is_empty() || host.contains(['/', '?', '#', '@', '\\']) {
                    return Err(fatal(format!(
                        "the settings make base_url `{rendered}`, whose host is not a plain host name; fix the instance settings"
                    )));
                }
                rendered
            }
        };
        let base = template::parse_base_url(&base_text)
            .map_err(|e| fatal(format!("base_url `{base_text}` is not usable: {e}")))?;
        if t.admin == Need::Required && admin.is_none() {
            return Err(fatal(format!(
                "type `{}` needs an admin credential; add `admin: {{ vault_path: ... }}` or `admin: {{ env: VAR }}`",
                t.name
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            // A redirect could lead out of the base URL with the admin credential.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| fatal("cannot set up the HTTP client".into()))?;
        Ok(HttpProvider {
            def,
            instance: instance.name.clone(),
            base,
            quota: t.quota,
            settings,
            admin,
            client,
            last_hint: std::sync::Mutex::new(None),
        })
    }

    fn context(&self, target: Target<'_>) -> Context {
        let mut settings = self.settings.clone();
        for (k, v) in target.settings {
            settings.insert(k.clone(), v.clone());
        }
        Context {
            settings,
            credential: target.credential.to_owned(),
            account: target.account.map(str::to_owned),
            admin: self.admin.as_ref().map(|a| a.secrets().clone()),
            ..Context::default()
        }
    }

    fn fatal(&self, op: &str, message: impl std::fmt::Display) -> ProviderError {
        ProviderError::Fatal(format!(
            "{} ({}) {op}: {message}",
            self.instance, self.def.name
        ))
    }

    fn call_def(&self, op: &str) -> Result<&CallDef, ProviderError> {
        self.def
            .http
            .call(op)
            .ok_or_else(|| self.fatal(op, format!("the definition has no `{op}` call")))
    }

    /// Puts the credentials of `auth` in `headers`; returns the form fields of
    /// `form` entries (OAuth `client_secret_post`) for the caller's form body.
    fn auth_headers(
        &self,
        op: &str,
        auth: &[AuthDef],
        cx: &Context,
        headers: &mut HeaderMap,
    ) -> Result<Vec<(String, Secret)>, ProviderError> {
        let mut form = Vec::new();
        for a in auth {
            if let Some(when) = &a.when {
                let applies = template::render(when, cx)
                    .map_err(|e| self.fatal(op, format!("auth when: {e}")))?;
                // minijinja prints a boolean as `True` / `False`.
                if !applies.trim().eq_ignore_ascii_case("true") {
                    continue;
                }
            }
            let secret: Secret = if a.secret == "new" {
                cx.new_secret
                    .clone()
                    .ok_or_else(|| self.fatal(op, "no new value to authenticate with"))?
            } else {
                let field = a.secret.trim_start_matches("admin.");
                let admin = self.admin.as_ref().ok_or_else(|| {
                    self.fatal(op, "the definition authenticates with an admin credential, but the instance names none; add `admin:` to it")
                })?;
                admin.require(&[field])?.clone()
            };
            let (name, value) = match a.scheme {
                Scheme::Bearer => (
                    reqwest::header::AUTHORIZATION,
                    Secret::new(format!("Bearer {}", secret.expose())),
                ),
                Scheme::Form => {
                    form.push((a.name.clone().unwrap_or_default(), secret));
                    continue;
                }
                Scheme::Basic => {
                    use base64::Engine as _;
                    // A user name the admin credential holds (a Twilio Main key's
                    // SID) wins over the template (the Account SID).
                    let from_admin = a.username_from.as_deref().and_then(|f| {
                        self.admin
                            .as_ref()
                            .and_then(|admin| admin.get(f.trim_start_matches("admin.")))
                    });
                    let user = match from_admin {
                        Some(u) => u.expose().to_owned(),
                        None => template::render(a.username.as_deref().unwrap_or(""), cx)
                            .map_err(|e| self.fatal(op, format!("auth username: {e}")))?,
                    };
                    let pair = Secret::new(format!("{user}:{}", secret.expose()));
                    (
                        reqwest::header::AUTHORIZATION,
                        Secret::new(format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair.expose())
                        )),
                    )
                }
                Scheme::Header => (
                    HeaderName::from_bytes(a.name.as_deref().unwrap_or("").as_bytes())
                        .map_err(|_| self.fatal(op, "bad auth header name"))?,
                    Secret::new(format!(
                        "{}{}",
                        a.prefix.as_deref().unwrap_or(""),
                        secret.expose()
                    )),
                ),
            };
            let mut v = HeaderValue::from_str(value.expose()).map_err(|_| {
                self.fatal(
                    op,
                    format!(
                        "the secret for `{}` cannot go in an HTTP header (control characters)",
                        a.secret
                    ),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        Ok(form)
    }

    /// Sends one call (one page). `url` replaces the rendered path for next pages.
    async fn send(
        &self,
        op: &str,
        call: &CallDef,
        cx: &Context,
        url: Option<url::Url>,
        extra_query: &[(String, String)],
    ) -> Result<Answer, ProviderError> {
        let url = match url {
            Some(u) => u,
            None => {
                let path = template::render(&call.path, cx)
                    .map_err(|e| self.fatal(op, format!("path: {e}")))?;
                let mut query = Vec::new();
                for (k, v) in &call.query {
                    let v = template::render(v, cx)
                        .map_err(|e| self.fatal(op, format!("query `{k}`: {e}")))?;
                    if !v.is_empty() {
                        query.push((k.clone(), v));
                    }
                }
                query.extend(extra_query.iter().cloned());
                template::confine(&self.base, &path, &query)
                    .map_err(|e| self.fatal(op, format!("refused: {e}")))?
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in self.def.http.headers.iter().chain(&call.headers) {
            let v = template::render(v, cx)
                .map_err(|e| self.fatal(op, format!("header `{k}`: {e}")))?;
            if v.is_empty() {
                continue;
            }
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| self.fatal(op, format!("bad header name `{k}`")))?;
            let value = HeaderValue::from_str(&v)
                .map_err(|_| self.fatal(op, format!("header `{k}` renders to an invalid value")))?;
            headers.insert(name, value);
        }
        let auth = call.auth.as_deref().unwrap_or(&self.def.http.auth);
        let auth_form = self.auth_headers(op, auth, cx, &mut headers)?;
        let method = reqwest::Method::from_bytes(call.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut request = self.client.request(method, url.clone()).headers(headers);
        if let Some(body) = &call.body {
            let rendered = template::render_json(body, cx)
                .map_err(|e| self.fatal(op, format!("body: {e}")))?;
            let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&rendered).unwrap_or_default());
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.to_vec());
        } else if let Some(form) = &call.form {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in form {
                let v = template::render(v, cx)
                    .map_err(|e| self.fatal(op, format!("form `{k}`: {e}")))?;
                // Like a query parameter, an empty field is left out.
                if !v.is_empty() {
                    ser.append_pair(k, &v);
                }
            }
            for (k, secret) in &auth_form {
                ser.append_pair(k, secret.expose());
            }
            let encoded = zeroize::Zeroizing::new(ser.finish());
            request = request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(encoded.to_string());
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "the request failed"
            };
            ProviderError::Transient(format!(
                "{} ({}) {op}: {} {}: {why}",
                self.instance,
                self.def.name,
                call.method.as_str(),
                url.path()
            ))
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(hint) = rate_hint(&headers, &self.def.http.rate_limit) {
            *self.last_hint.lock().unwrap_or_else(|e| e.into_inner()) = Some(hint);
        }
        tracing::debug!(instance = %self.instance, op, method = call.method.as_str(), path = %url.path(), status, "HTTP call.");
        let seen = if call.expect.contains(&status) {
            Seen::Expected
        } else if call.gone.contains(&status) {
            Seen::Gone
        } else if call.refused.contains(&status) {
            Seen::Refused
        } else {
            return Err(self.classify(op, call, url.path(), status, &headers));
        };
        let bytes = response.bytes().await.map_err(|_| {
            ProviderError::Transient(format!(
                "{} ({}) {op}: the answer was cut off",
                self.instance, self.def.name
            ))
        })?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Answer {
            seen,
            headers,
            body,
        })
    }

    /// An unexpected status, classified: rate limits (with the delay the headers
    /// give), transient server trouble, or a fatal refusal with what to check.
    fn classify(
        &self,
        op: &str,
        call: &CallDef,
        path: &str,
        status: u16,
        headers: &HeaderMap,
    ) -> ProviderError {
        let rl = &self.def.http.rate_limit;
        let what = format!(
            "{} ({}) {op}: {} {path} answered {status}",
            self.instance,
            self.def.name,
            call.method.as_str()
        );
        // A 403 is a rate limit when the window is used up (GitHub's primary
        // limit: remaining 0) or when it says when to come back (GitHub's
        // secondary limits: Retry-After while requests are still left).
        let exhausted = status == 403
            && (rl
                .remaining
                .as_deref()
                .and_then(|h| headers.get(h))
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == "0")
                || headers.contains_key(reqwest::header::RETRY_AFTER));
        if rl.statuses.contains(&status) || exhausted {
            return ProviderError::RateLimited {
                retry_after: retry_after(headers, rl),
                message: what,
            };
        }
        if status >= 500 || status == 408 {
            return ProviderError::Transient(what);
        }
        let hint = match status {
            401 => "the admin credential was refused; check it (and that it has not expired)",
            403 => "the admin credential lacks a permission this call needs",
            404 => "not found; check the instance and credential settings (ids, names)",
            409 | 422 => {
                "the provider refused the change (a conflict, a full quota or a policy); see its console"
            }
            400 => "the provider refused the request; check the credential settings",
            _ => "see the provider's documentation cited in the definition file",
        };
        ProviderError::Fatal(format!("{what} (expected {:?}): {hint}", call.expect))
    }

    /// Runs a list or lookup call over every page and returns the matching items.
    async fn fetch(
        &self,
        op: &str,
        call: &CallDef,
        cx: &Context,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut items_out = Vec::new();
        let mut next: Option<url::Url> = None;
        let paginate = call.paginate.as_ref().and_then(|p| p.mode().ok());
        let mut page = match &paginate {
            Some(Paginate::Page { first, .. }) => *first,
            _ => 0,
        };
        let mut cursor: Option<String> = None;
        let mut wanted = Vec::new();
        for (p, t) in &call.filter {
            let v = template::render(t, cx).map_err(|e| self.fatal(op, format!("where: {e}")))?;
            wanted.push((p.clone(), v));
        }
        for _ in 0..MAX_PAGES {
            let mut extra = Vec::new();
            match &paginate {
                Some(Paginate::Page {
                    param,
                    size_param,
                    size,
                    ..
                }) => {
                    extra.push((param.clone(), page.to_string()));
                    extra.push((size_param.clone(), size.to_string()));
                }
                Some(Paginate::Cursor { param, .. }) => {
                    if let Some(c) = &cursor {
                        extra.push((param.clone(), c.clone()));
                    }
                }
                _ => {}
            }
            let answer = self.send(op, call, cx, next.take(), &extra).await?;
            let items = match answer.body.pointer(call.items.as_deref().unwrap_or("")) {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::Object(_)) if call.items.as_deref() == Some("") => {
                    vec![answer.body.clone()]
                }
                _ if answer.seen == Seen::Gone => Vec::new(),
                _ => {
                    return Err(self.fatal(op, format!(
                        "the answer has no array at `{}`; the definition does not match the API",
                        call.items.as_deref().unwrap_or("")
                    )));
                }
            };
            let count = items.len();
            items_out.extend(items.into_iter().filter(|item| {
                wanted
                    .iter()
                    .all(|(p, v)| item.pointer(p).map(text).as_deref() == Some(v.as_str()))
            }));
            match &paginate {
                None => break,
                Some(Paginate::Link) => match link_next(&answer.headers) {
                    Some(n) => next = Some(self.next_url(op, &n)?),
                    None => break,
                },
                Some(Paginate::NextUri { pointer }) => match answer.body.pointer(pointer).map(text)
                {
                    Some(n) if !n.is_empty() => next = Some(self.next_url(op, &n)?),
                    _ => break,
                },
                Some(Paginate::Cursor { pointer, .. }) => {
                    match answer.body.pointer(pointer).map(text) {
                        Some(c) if !c.is_empty() => cursor = Some(c),
                        _ => break,
                    }
                }
                Some(Paginate::Page { size, .. }) => {
                    if count < *size as usize {
                        break;
                    }
                    page += 1;
                }
            }
        }
        Ok(items_out)
    }

    fn next_url(&self, op: &str, next: &str) -> Result<url::Url, ProviderError> {
        template::confine_next(&self.base, next)
            .map_err(|e| self.fatal(op, format!("refused the next page: {e}")))
    }

    /// Runs the definition's lookups (if any) in order and binds their values
    /// as `found.*`. Each must match exactly one item: two matches mean the
    /// settings do not say which one is meant (another user's token of the same
    /// name), and binding the first could rotate the wrong credential.
    async fn lookup(&self, cx: &mut Context) -> Result<(), ProviderError> {
        for call in &self.def.http.lookup {
            let items = self.fetch("lookup", call, cx).await?;
            let filters = || call.filter.keys().cloned().collect::<Vec<_>>().join(", ");
            let item = match items.as_slice() {
                [one] => one,
                [] => {
                    return Err(self.fatal(
                        "lookup",
                        format!(
                            "nothing matched ({}); check the credential's account and settings",
                            filters()
                        ),
                    ));
                }
                many => {
                    return Err(self.fatal(
                        "lookup",
                        format!(
                            "{} items match ({}), so rekey cannot tell which one is meant; narrow the credential's settings (the provider file says how)",
                            many.len(),
                            filters()
                        ),
                    ));
                }
            };
            for (name, pointer) in &call.bind {
                let v = item.pointer(pointer).cloned().ok_or_else(|| {
                    self.fatal("lookup", format!("the matching item has no `{pointer}`"))
                })?;
                cx.found.insert(name.clone(), v);
            }
        }
        Ok(())
    }

    /// Reads the key `old` that the new key replaces (`read_old`), binding
    /// `old.*` for the create call. Nothing is bound when the definition
    /// has no `read_old`, rekey does not know the old key, or it is gone.
    async fn read_old(&self, cx: &mut Context, old: Option<&str>) -> Result<(), ProviderError> {
        let (Some(call), Some(old)) = (&self.def.http.read_old, old) else {
            return Ok(());
        };
        cx.old_key_id = Some(old.to_owned());
        let answer = self.send("read_old", call, cx, None, &[]).await?;
        if answer.seen != Seen::Expected {
            return Ok(());
        }
        let mut bound = std::collections::BTreeMap::new();
        for (name, pointer) in &call.bind {
            bound.insert(
                name.clone(),
                answer.body.pointer(pointer).cloned().unwrap_or(Value::Null),
            );
        }
        cx.old = Some(bound);
        Ok(())
    }

    async fn list_keys(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let mut cx = self.context(target);
        self.lookup(&mut cx).await?;
        let call = self.call_def("list")?;
        let items = self.fetch("list", call, &cx).await?;
        Ok(items.iter().filter_map(|item| key_of(call, item)).collect())
    }
}

/// One item of a `list` answer as a key, through the call's pointers; `None` when
/// the item has no key id. Pure (fuzzed: fuzz/fuzz_targets/http_answer.rs).
pub fn key_of(call: &CallDef, item: &Value) -> Option<KeyInfo> {
    let id = call
        .key_id
        .as_deref()
        .and_then(|p| item.pointer(p))
        .map(text)?;
    let active = match &call.active {
        Some(a) => item.pointer(&a.pointer) == Some(&a.equals),
        None => true,
    };
    Some(KeyInfo {
        id,
        active,
        created_at: call
            .created_at
            .as_deref()
            .and_then(|p| item.pointer(p))
            .and_then(epoch),
        tag: call.tag.as_deref().and_then(|p| item.pointer(p)).map(text),
    })
}

/// A JSON value as the text a template compares it with.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Seconds since the epoch from a number, an RFC 3339 time (any offset, `Z`, or
/// none: UTC) or an RFC 2822 date (`Mon, 22 Aug 2011 20:58:45 +0000`, Twilio's;
/// HTTP dates are RFC 2822 with `GMT`).
pub fn epoch(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let t = rfc3339_epoch(s).or_else(|| rfc2822_epoch(s))?;
    u64::try_from(t).ok()
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian; Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn epoch_of(y: i64, mo: i64, d: i64, h: i64, mi: i64, sec: i64, offset_secs: i64) -> Option<i64> {
    let valid = (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..=23).contains(&h)
        && (0..=59).contains(&mi)
        && (0..=60).contains(&sec);
    valid.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs)
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `2011-08-22T20:58:45.123-07:00`, `...Z`, or no offset (UTC).
fn rfc3339_epoch(s: &str) -> Option<i64> {
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (time, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let time = time.split('.').next()?;
    let mut t = time.split(':');
    let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let offset = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':')?;
            sign * (num(oh)? * 3600 + num(om)? * 60)
        }
    };
    epoch_of(y, mo, day, h, mi, sec, offset)
}

/// `Mon, 22 Aug 2011 20:58:45 +0000` (the weekday optional; `GMT`/`UT`/`Z` or `±HHMM`).
fn rfc2822_epoch(s: &str) -> Option<i64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    let mo = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| month.eq_ignore_ascii_case(m))? as i64
        + 1;
    let mut t = time.split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let sec = t.next().map_or(Some(0), num)?;
    let offset = match *zone {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (num(&z[1..3])? * 3600 + num(&z[3..5])? * 60)
        }
        _ => return None,
    };
    epoch_of(num(year)?, mo, num(day)?, h, mi, sec, offset)
}

/// The `rel="next"` target of a Link header.
pub fn link_next(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            if pieces.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            }) {
                return Some(
                    target
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned(),
                );
            }
        }
    }
    None
}

/// Requests left in the provider's window and the time to its reset, when the
/// definition names both headers and the answer carries them.
pub fn rate_hint(
    headers: &HeaderMap,
    rl: &definition::RateLimitDef,
) -> Option<crate::provider::RateHint> {
    let remaining = headers
        .get(rl.remaining.as_deref()?)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    let reset = rl.reset.as_ref()?;
    let n = headers
        .get(&reset.header)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)?;
    let reset_in = match reset.format {
        ResetFormat::Seconds => capped_seconds(n),
        ResetFormat::Epoch => capped_until_epoch(n, SystemTime::now()),
    };
    Some(crate::provider::RateHint {
        remaining,
        reset_in,
    })
}

/// `n` seconds (finite, not negative) as a delay of at most `MAX_WAIT`. A header
/// can name any number; `Duration::from_secs_f64` panics past `u64::MAX` seconds
/// (found by fuzzing: `Retry-After: 5e122`).
fn capped_seconds(n: f64) -> Duration {
    Duration::try_from_secs_f64(n).map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
}

/// The time from `now` until `n` seconds after the Unix epoch: zero when that is
/// past, at most `MAX_WAIT` (`SystemTime + Duration` panics past what a
/// `SystemTime` holds).
fn capped_until_epoch(n: f64, now: SystemTime) -> Duration {
    Duration::try_from_secs_f64(n)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .map_or(MAX_WAIT, |at| {
            at.duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_WAIT)
        })
}

/// The delay a rate-limited answer asks for: Retry-After (seconds or an HTTP
/// date), else the definition's reset header (epoch or seconds).
pub fn retry_after(headers: &HeaderMap, rl: &definition::RateLimitDef) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let now = SystemTime::now();
    let wait = if let Some(v) = header("retry-after") {
        match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Some(capped_seconds(s)),
            _ => httpdate::parse_http_date(v)
                .ok()
                .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO)),
        }
    } else if let Some(reset) = &rl.reset
        && let Some(v) = header(&reset.header)
        && let Ok(n) = v.parse::<f64>()
        && n.is_finite()
        && n >= 0.0
    {
        match reset.format {
            ResetFormat::Seconds => Some(capped_seconds(n)),
            ResetFormat::Epoch => Some(capped_until_epoch(n, now)),
        }
    } else {
        None
    };
    wait.map(|w| w.min(MAX_WAIT))
}

#[async_trait]
impl Provider for HttpProvider {
    fn rate_hint(&self) -> Option<crate::provider::RateHint> {
        *self.last_hint.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replaces_old_on_create(&self) -> bool {
        self.def.http.in_place
    }

    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        if self.def.http.list.is_some() {
            let keys = self.list_keys(target).await?;
            if let Some(q) = self.quota
                && keys.len() >= q as usize
                && keys.iter().all(|k| k.active)
            {
                return Err(self.fatal(
                    "preflight",
                    format!(
                        "quota full: {} active keys of {q}; delete one by hand",
                        keys.len()
                    ),
                ));
            }
        } else {
            let mut cx = self.context(target);
            self.lookup(&mut cx).await?;
        }
        Ok(())
    }

    /// The definition's `last_used` call when it has one, else the `last_used`
    /// pointer of its `list` items (a key the list lacks is gone).
    async fn last_used(
        &self,
        target: Target<'_>,
        key_id: &str,
    ) -> Result<crate::provider::LastUse, ProviderError> {
        use crate::provider::LastUse;
        let read = |v: Option<&Value>| match v {
            None | Some(Value::Null) => LastUse::Never,
            Some(Value::String(s)) if s.is_empty() => LastUse::Never,
            Some(v) => epoch(v).map_or_else(
                || {
                    LastUse::Unknown(
                        "the provider's last-use time is not a time rekey reads".into(),
                    )
                },
                LastUse::At,
            ),
        };
        let mut cx = self.context(target);
        if let Some(call) = &self.def.http.last_used {
            self.lookup(&mut cx).await?;
            cx.key_id = Some(key_id.to_owned());
            let answer = self.send("last_used", call, &cx, None, &[]).await?;
            if answer.seen == Seen::Gone {
                return Ok(LastUse::Gone);
            }
            let pointer = call.last_used.as_deref().unwrap_or_default();
            return Ok(read(answer.body.pointer(pointer)));
        }
        let Some(call) = self
            .def
            .http
            .list
            .as_ref()
            .filter(|c| c.last_used.is_some())
        else {
            return Ok(LastUse::Unknown(format!(
                "the `{}` definition maps no last use (`last_used`)",
                self.def.name
            )));
        };
        self.lookup(&mut cx).await?;
        let items = self.fetch("list", call, &cx).await?;
        let pointer = call.last_used.as_deref().unwrap_or_default();
        let found = items.iter().find(|item| {
            call.key_id
                .as_deref()
                .and_then(|p| item.pointer(p))
                .is_some_and(|id| text(id) == key_id)
        });
        Ok(match found {
            Some(item) => read(item.pointer(pointer)),
            None => LastUse::Gone,
        })
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        if self.def.http.in_place {
            // The create call replaces the value itself: no second key can exist.
            return Ok(Vec::new());
        }
        self.list_keys(target).await
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        self.create_replacing(target, tag, None).await
    }

    async fn create_replacing(
        &self,
        target: Target<'_>,
        tag: &str,
        old_key: Option<&str>,
    ) -> Result<Issued, ProviderError> {
        let call = self.call_def("create")?;
        let mut cx = self.context(target);
        cx.tag = Some(tag.to_owned());
        let generated = match self.def.http.generate {
            Some(Generate::SshEd25519) => {
                let (private, public) = sshkey::generate(tag);
                cx.public_key = Some(public);
                Some(private)
            }
            None => None,
        };
        self.lookup(&mut cx).await?;
        self.read_old(&mut cx, old_key).await?;
        let answer = self.send("create", call, &cx, None, &[]).await?;
        let key_id = match (&call.key_id, &call.key_id_value) {
            (Some(p), _) => answer.body.pointer(p).map(text).filter(|s| !s.is_empty()),
            (None, Some(t)) => Some(
                template::render(t, &cx).map_err(|e| self.fatal("create", format!("key_id_value: {e}")))?,
            ),
            (None, None) => None,
        }
        .ok_or_else(|| {
            self.fatal("create", "the answer has no key id where the definition says; a key may have been created: `rekey resume` finds it by its tag")
        })?;
        let secret = match generated {
            Some(s) => s,
            None => {
                let p = call.secret.as_deref().unwrap_or("");
                match answer.body.pointer(p) {
                    Some(Value::String(s)) if !s.is_empty() => Secret::new(s.clone()),
                    _ => {
                        return Err(self.fatal("create", format!(
                            "the answer has no secret at `{p}`; key {key_id} was created without a usable value: delete it"
                        )));
                    }
                }
            }
        };
        Ok(Issued::new(key_id, secret))
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let call = self.call_def("change")?;
        let mut cx = self.context(target);
        cx.new_secret = Some(new.clone());
        self.lookup(&mut cx).await?;
        self.send("change", call, &cx, None, &[]).await?;
        Ok(())
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let call = self.def.http.verify.as_ref().ok_or_else(|| {
            self.fatal("verify", "the provider's API has no way to test a credential; set `verify: false` on this credential")
        })?;
        let mut cx = self.context(target);
        cx.key_id = key_id.map(str::to_owned);
        cx.new_secret = Some(secret.clone());
        if self.def.http.generate == Some(Generate::SshEd25519) {
            match sshkey::public_of(secret) {
                Ok(p) => cx.public_key = Some(p),
                Err(why) => return Err(self.fatal("verify", why)),
            }
        }
        self.lookup(&mut cx).await?;
        let answer = self.send("verify", call, &cx, None, &[]).await?;
        if answer.seen != Seen::Expected {
            return Ok(false);
        }
        // A list answer (JumpCloud's SSH keys): the key must be among its items.
        let body = match &call.items {
            None => answer.body,
            Some(items) => {
                let mut wanted = Vec::new();
                for (p, t) in &call.filter {
                    let v = template::render(t, &cx)
                        .map_err(|e| self.fatal("verify", format!("where: {e}")))?;
                    wanted.push((p.clone(), v));
                }
                let found = answer
                    .body
                    .pointer(items)
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|item| {
                                wanted.iter().all(|(p, v)| {
                                    item.pointer(p).map(text).as_deref() == Some(v.as_str())
                                })
                            })
                            .cloned()
                    });
                match found {
                    Some(item) => item,
                    None => return Ok(false),
                }
            }
        };
        for (pointer, t) in &call.check {
            let want = template::render(t, &cx)
                .map_err(|e| self.fatal("verify", format!("check: {e}")))?;
            let got = body.pointer(pointer).map(text);
            if got.as_deref().map(str::trim) != Some(want.trim()) {
                tracing::debug!(instance = %self.instance, pointer, "Verify check did not match.");
                return Ok(false);
            }
        }
        for (pointer, t) in &call.refused_when {
            let refused = template::render(t, &cx)
                .map_err(|e| self.fatal("verify", format!("refused_when: {e}")))?;
            if body.pointer(pointer).map(text).as_deref().map(str::trim) == Some(refused.trim()) {
                tracing::debug!(instance = %self.instance, pointer, "Verify found the new credential disabled.");
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let Some(call) = &self.def.http.deactivate else {
            return Ok(());
        };
        let mut cx = self.context(target);
        cx.key_id = Some(key_id.to_owned());
        self.lookup(&mut cx).await?;
        self.send("deactivate", call, &cx, None, &[]).await?;
        Ok(())
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        if self.def.http.in_place {
            // The rotate call already killed the old value, and the new one is the
            // only value left: there is nothing rekey may delete.
            return Ok(());
        }
        let call = self.call_def("revoke")?;
        let mut cx = self.context(target);
        cx.key_id = Some(key_id.to_owned());
        self.lookup(&mut cx).await?;
        // Some providers delete only inactive keys (Okta): a rollback deletes a
        // new, active key, so deactivate first where the definition can.
        if let Some(deactivate) = &self.def.http.deactivate {
            self.send("deactivate", deactivate, &cx, None, &[]).await?;
        }
        self.send("revoke", call, &cx, None, &[]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_give_the_delay() {
        let rl = definition::RateLimitDef::default();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, &rl), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h, &rl).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let okta = definition::RateLimitDef {
            reset: Some(definition::ResetDef {
                header: "x-rate-limit-reset".into(),
                format: ResetFormat::Epoch,
            }),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 20;
        h.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&at.to_string()).unwrap(),
        );
        let d = retry_after(&h, &okta).unwrap();
        assert!(
            d > Duration::from_secs(15) && d <= Duration::from_secs(20),
            "{d:?}"
        );
        assert_eq!(retry_after(&HeaderMap::new(), &okta), None);
    }

    #[test]
    fn remaining_and_reset_headers_become_a_rate_hint() {
        let github = definition::RateLimitDef {
            remaining: Some("x-ratelimit-remaining".into()),
            reset: Some(definition::ResetDef {
                header: "x-ratelimit-reset".into(),
                format: ResetFormat::Seconds,
            }),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(rate_hint(&h, &github), None);
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        assert_eq!(rate_hint(&h, &github), None, "no reset header: no hint");
        h.insert("x-ratelimit-reset", HeaderValue::from_static("12"));
        assert_eq!(
            rate_hint(&h, &github),
            Some(crate::provider::RateHint {
                remaining: 3,
                reset_in: Duration::from_secs(12)
            })
        );
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("lots"));
        assert_eq!(rate_hint(&h, &github), None);
    }

    #[test]
    fn dates_in_every_format_the_vendors_send_become_epoch_seconds() {
        // 2011-08-22T20:58:45Z = 1314046725.
        for (text, want) in [
            ("2011-08-22T20:58:45Z", 1_314_046_725),
            ("2011-08-22T20:58:45.123Z", 1_314_046_725),
            ("2011-08-22T13:58:45-07:00", 1_314_046_725),
            ("2011-08-23T02:28:45+05:30", 1_314_046_725),
            ("2011-08-22 20:58:45", 1_314_046_725),
            ("Mon, 22 Aug 2011 20:58:45 +0000", 1_314_046_725),
            ("Mon, 22 Aug 2011 13:58:45 -0700", 1_314_046_725),
            ("Mon, 22 Aug 2011 20:58:45 GMT", 1_314_046_725),
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T00:00:00Z", 951_782_400),
        ] {
            assert_eq!(epoch(&Value::from(text)), Some(want), "{text}");
        }
        assert_eq!(epoch(&Value::from(1_314_046_725u64)), Some(1_314_046_725));
        for bad in [
            "yesterday",
            "2011-13-22T20:58:45Z",
            "Mon, 22 Foo 2011 20:58:45 +0000",
            "",
        ] {
            assert_eq!(epoch(&Value::from(bad)), None, "{bad}");
        }
    }

    #[test]
    fn link_headers_name_the_next_page() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#),
        );
        assert_eq!(
            link_next(&h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
    }
}
