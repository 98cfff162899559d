//! The `http:` section of a provider file: its types and its validation. Loading
//! reads the file into the positioned YAML tree the playbook loader uses, so every
//! problem is reported with its file, line, column, a snippet and a fix, all at once.

use super::template;
use super::{Kind, ProviderType};
use crate::doc::de::NodeDe;
use crate::doc::diagnostic::{Diagnostic, Report, did_you_mean};
use crate::doc::yaml::{self, Node, Pos};
use indexmap::IndexMap;
use serde::Deserialize;
use std::sync::Arc;

/// How a provider's API is driven, from the `http:` section of its file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDef {
    /// Root every request goes under: a template over instance settings (for a
    /// host or tenant name); the instance setting `base_url` replaces it whole.
    pub base_url: String,
    /// How management calls authenticate with the admin credential.
    #[serde(default)]
    pub auth: Vec<AuthDef>,
    /// Headers sent with every request (templates; an empty result drops the header).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub rate_limit: RateLimitDef,
    /// The create call replaces the secret of the same credential (GitLab rotate,
    /// Cloudflare roll): the old value dies at once, so there is no old key to
    /// retire and no new key to delete on rollback.
    #[serde(default)]
    pub in_place: bool,
    /// A secret rekey makes itself before create (SSH key pairs for deploy keys):
    /// the provider gets the public half, Vault the private half.
    #[serde(default)]
    pub generate: Option<Generate>,
    /// Calls made before every operation, in order, to find ids the other calls
    /// need (a user id from a user name); their `bind` values are `found.<name>`,
    /// visible to the calls after them. One call or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub lookup: Vec<CallDef>,
    /// A call made before create when rekey knows the key being replaced
    /// (`{{ old_key_id }}`), to read what it was allowed to do; its `bind` values
    /// are `old.<name>` in the create call (none when the old key is unknown or
    /// gone).
    #[serde(default)]
    pub read_old: Option<CallDef>,
    #[serde(default)]
    pub list: Option<CallDef>,
    #[serde(default)]
    pub create: Option<CallDef>,
    #[serde(default)]
    pub change: Option<CallDef>,
    #[serde(default)]
    pub verify: Option<CallDef>,
    #[serde(default)]
    pub deactivate: Option<CallDef>,
    #[serde(default)]
    pub revoke: Option<CallDef>,
    /// Reads one key (`{{ key_id }}`) to learn when it was last used (`rekey
    /// watch`); its `last_used` pointer says where, `gone` that the key no
    /// longer exists. Without it, `list` items' `last_used` pointer is used.
    #[serde(default)]
    pub last_used: Option<CallDef>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Generate {
    /// An Ed25519 key pair; the secret is the private key in OpenSSH format.
    SshEd25519,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic base64(<username>:<secret>)`.
    Basic,
    /// `<name>: <prefix><secret>`.
    Header,
    /// A form field `<name>=<secret>` (OAuth `client_secret_post`); only in the
    /// `auth` of a call with a `form`.
    Form,
}

/// One authentication header. The secret is named, never templated: `admin.<field>`
/// (a field of the instance's admin credential) or `new` (the value being verified).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDef {
    pub scheme: Scheme,
    pub secret: String,
    /// Header name (`header` scheme).
    #[serde(default)]
    pub name: Option<String>,
    /// Text before the secret (`header` scheme), e.g. `SSWS ` for Okta.
    #[serde(default)]
    pub prefix: Option<String>,
    /// User name template (`basic` scheme); not secret.
    #[serde(default)]
    pub username: Option<String>,
    /// `basic`: the admin credential's field holding the user name, used instead
    /// of `username` when the credential has it (a Twilio Main key's SID).
    #[serde(default)]
    pub username_from: Option<String>,
    /// A template: the entry applies only when it renders `true` (a setting
    /// choosing how a client authenticates).
    #[serde(default)]
    pub when: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    /// Statuses that mean "slow down" (default 429).
    #[serde(default = "default_limited")]
    pub statuses: Vec<u16>,
    /// A header counting the requests left; a 403 with it at 0 is a rate limit too
    /// (GitHub's primary limit).
    #[serde(default)]
    pub remaining: Option<String>,
    /// A header saying when the window resets, when Retry-After is absent.
    #[serde(default)]
    pub reset: Option<ResetDef>,
}

impl Default for RateLimitDef {
    fn default() -> Self {
        RateLimitDef {
            statuses: default_limited(),
            remaining: None,
            reset: None,
        }
    }
}

fn default_limited() -> Vec<u16> {
    vec![429]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetDef {
    pub header: String,
    pub format: ResetFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Seconds since the Unix epoch (GitHub, Okta, SendGrid).
    Epoch,
    /// Seconds from now (Datadog).
    Seconds,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One request and what to make of its answer. Which fields apply depends on the
/// operation; validation says which.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDef {
    pub method: Method,
    /// Path under the base URL (template); must start with `/`.
    pub path: String,
    #[serde(default)]
    pub query: IndexMap<String, String>,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// JSON body: string leaves are templates; a leaf that is one `{{ expr }}`
    /// keeps the expression's type.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Form-encoded body (templates).
    #[serde(default)]
    pub form: Option<IndexMap<String, String>>,
    /// Replaces the definition's `auth` for this call (verify authenticates with the
    /// new value); an empty list sends no credential.
    #[serde(default)]
    pub auth: Option<Vec<AuthDef>>,
    /// Statuses that mean success.
    pub expect: Vec<u16>,
    /// Statuses that mean "already gone" (deactivate, revoke): success too.
    #[serde(default)]
    pub gone: Vec<u16>,
    /// Statuses that mean "the provider refused this credential" (verify).
    #[serde(default)]
    pub refused: Vec<u16>,
    /// Verify: JSON pointers whose values must equal the templates (else refused).
    #[serde(default)]
    pub check: IndexMap<String, String>,
    /// Verify: JSON pointers whose values, when equal to the templates, mean the
    /// credential does not work (a disabled key that still answers 200).
    #[serde(default)]
    pub refused_when: IndexMap<String, String>,
    /// JSON pointer to the new secret in the answer (create).
    #[serde(default)]
    pub secret: Option<String>,
    /// JSON pointer to the new key's id in the answer (create), or, for
    /// list and lookup, in each item.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Template giving the key id when the answer has none (in-place rotation).
    #[serde(default)]
    pub key_id_value: Option<String>,
    /// List and lookup: JSON pointer to the array of items (`""` for the whole answer).
    #[serde(default)]
    pub items: Option<String>,
    /// List and lookup: keep items whose pointers equal the templates.
    #[serde(default, rename = "where")]
    pub filter: IndexMap<String, String>,
    /// List: pointer to the name rekey gave the key.
    #[serde(default)]
    pub tag: Option<String>,
    /// List: pointer to the creation time (RFC 3339 or epoch seconds).
    #[serde(default)]
    pub created_at: Option<String>,
    /// List and last_used: pointer to when the key was last used (RFC 3339 or
    /// epoch seconds; null: never).
    #[serde(default)]
    pub last_used: Option<String>,
    /// List: an item is active when the pointer equals the value (else always active).
    #[serde(default)]
    pub active: Option<ActiveDef>,
    /// Lookup: names for values of the (first matching) item, as `found.<name>`.
    #[serde(default)]
    pub bind: IndexMap<String, String>,
    /// List and lookup: how to get the next page.
    #[serde(default)]
    pub paginate: Option<PaginateDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveDef {
    pub pointer: String,
    pub equals: serde_json::Value,
}

/// Pagination, one of: `link: true` (the `Link: <...>; rel="next"` header),
/// `next_uri: POINTER` (a next-page URI in the body), `cursor: POINTER` with
/// `cursor_param` (a cursor echoed back as a query parameter), or `page_param` +
/// `size_param` + `size` (page numbers from `first`, until a short page).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaginateDef {
    #[serde(default)]
    pub link: bool,
    #[serde(default)]
    pub next_uri: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub cursor_param: Option<String>,
    #[serde(default)]
    pub page_param: Option<String>,
    #[serde(default)]
    pub size_param: Option<String>,
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub first: u32,
}

/// The pagination mode a valid `PaginateDef` describes.
#[derive(Clone, Debug)]
pub enum Paginate {
    Link,
    NextUri {
        pointer: String,
    },
    Cursor {
        pointer: String,
        param: String,
    },
    Page {
        param: String,
        size_param: String,
        size: u32,
        first: u32,
    },
}

impl PaginateDef {
    pub fn mode(&self) -> Result<Paginate, &'static str> {
        let modes = usize::from(self.link)
            + usize::from(self.next_uri.is_some())
            + usize::from(self.cursor.is_some())
            + usize::from(self.page_param.is_some());
        if modes != 1 {
            return Err(
                "set exactly one of `link: true`, `next_uri`, `cursor` (+ `cursor_param`), `page_param` (+ `size_param`, `size`)",
            );
        }
        if self.link {
            return Ok(Paginate::Link);
        }
        if let Some(p) = &self.next_uri {
            return Ok(Paginate::NextUri { pointer: p.clone() });
        }
        if let Some(p) = &self.cursor {
            return match &self.cursor_param {
                Some(param) => Ok(Paginate::Cursor {
                    pointer: p.clone(),
                    param: param.clone(),
                }),
                None => Err("`cursor` needs `cursor_param`: the query parameter that carries it"),
            };
        }
        match (&self.page_param, &self.size_param, self.size) {
            (Some(param), Some(size_param), Some(size)) if size > 0 => Ok(Paginate::Page {
                param: param.clone(),
                size_param: size_param.clone(),
                size,
                first: self.first,
            }),
            _ => Err("`page_param` needs `size_param` and a positive `size`"),
        }
    }
}

/// `lookup:` as one call (a map) or a list of calls.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CallDef>, D::Error> {
    struct Calls;
    impl<'de> serde::de::Visitor<'de> for Calls {
        type Value = Vec<CallDef>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a call (method, path, ...) or a list of calls")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            CallDef::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|c| vec![c])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut calls = Vec::new();
            while let Some(c) = seq.next_element()? {
                calls.push(c);
            }
            Ok(calls)
        }
    }
    d.deserialize_any(Calls)
}

/// An operation's name as written in the file, for messages and validation.
pub const OPERATIONS: &[&str] = &[
    "lookup",
    "read_old",
    "list",
    "create",
    "change",
    "verify",
    "deactivate",
    "revoke",
    "last_used",
];

impl HttpDef {
    /// The call of operation `op` (the first one for `lookup`).
    pub fn call(&self, op: &str) -> Option<&CallDef> {
        match op {
            "lookup" => self.lookup.first(),
            "read_old" => self.read_old.as_ref(),
            "list" => self.list.as_ref(),
            "create" => self.create.as_ref(),
            "change" => self.change.as_ref(),
            "verify" => self.verify.as_ref(),
            "deactivate" => self.deactivate.as_ref(),
            "revoke" => self.revoke.as_ref(),
            "last_used" => self.last_used.as_ref(),
            _ => None,
        }
    }
}

/// A provider file whose `http:` section validated, with what the driver needs.
#[derive(Clone, Debug)]
pub struct Definition {
    pub name: String,
    pub kind: Kind,
    pub http: HttpDef,
}

/// Parses and validates the `http:` section of `text` (the file `file`, already read
/// as the catalog entry `t`). `Ok(None)`: the file has no `http:` section.
pub fn load(
    file: &str,
    text: &str,
    t: &ProviderType,
    render_templates: bool,
) -> Result<Option<Definition>, Report> {
    let report = |diagnostics: Vec<Diagnostic>| Report {
        file: file.to_owned(),
        source: Arc::new(text.to_owned()),
        diagnostics,
    };
    let root = match yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            return Err(report(vec![
                Diagnostic::error(e.message, e.pos).help(e.help),
            ]));
        }
    };
    let Some(node) = root.pointer("/http") else {
        return Ok(None);
    };
    let http: HttpDef = match serde_path_to_error::deserialize(NodeDe(node)) {
        Ok(h) => h,
        Err(e) => return Err(report(vec![structural(&root, &e)])),
    };
    let mut cx = Checker {
        root: &root,
        t,
        render_templates,
        out: Vec::new(),
    };
    cx.check(&http);
    if cx.out.is_empty() {
        Ok(Some(Definition {
            name: t.name.clone(),
            kind: t.kind,
            http,
        }))
    } else {
        Err(report(cx.out))
    }
}

/// A serde error (unknown key, wrong type, missing field) placed where it happened.
fn structural(
    root: &Node<'_>,
    e: &serde_path_to_error::Error<serde::de::value::Error>,
) -> Diagnostic {
    let mut pointer = String::from("/http");
    for seg in e.path().iter() {
        use serde_path_to_error::Segment;
        match seg {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&yaml::escape(key));
            }
            Segment::Unknown => {}
        }
    }
    let message = e.inner().to_string();
    // `unknown field `x`, expected one of `a`, `b``: underline the key, suggest a name.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let given = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split("expected ")
            .nth(1)
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        let pos = root
            .key_pos_of(&pointer)
            .or_else(|| root.pos_of(&pointer))
            .or_else(|| nearest(root, &pointer));
        let help = match did_you_mean(given, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("known keys here: {}", expected.join(", ")),
        };
        return Diagnostic::error(format!("unknown key `{given}` in the http definition"), pos)
            .label("not a definition key")
            .help(help);
    }
    let pos = root.pos_of(&pointer).or_else(|| nearest(root, &pointer));
    let help = if message.starts_with("missing field") {
        "add the missing key; providers/README.md lists every key of a definition"
    } else {
        "fix the value's type or spelling; providers/README.md describes every key"
    };
    Diagnostic::error(format!("{message} (at {pointer})"), pos).help(help)
}

/// The position of the deepest existing ancestor of `pointer`.
fn nearest(root: &Node<'_>, pointer: &str) -> Option<Pos> {
    let mut p = pointer.to_owned();
    while let Some(i) = p.rfind('/') {
        p.truncate(i);
        if let Some(pos) = root.pos_of(&p) {
            return Some(pos);
        }
    }
    None
}

struct Checker<'r, 'a> {
    root: &'r Node<'a>,
    t: &'r ProviderType,
    /// Dry-render every template (off for the shipped files at run time: the unit
    /// tests render them).
    render_templates: bool,
    out: Vec<Diagnostic>,
}

impl Checker<'_, '_> {
    fn pos(&self, pointer: &str) -> Option<Pos> {
        self.root
            .pos_of(pointer)
            .or_else(|| nearest(self.root, pointer))
    }

    fn err(&mut self, pointer: &str, message: impl Into<String>, help: impl Into<String>) {
        let d = Diagnostic::error(message, self.pos(pointer)).help(help);
        self.out.push(d);
    }

    fn check(&mut self, h: &HttpDef) {
        let ops = |o: &str| h.call(o).is_some();
        // Which calls each kind needs.
        match self.t.kind {
            Kind::Dual => {
                if !ops("create") {
                    self.err("/http", "a dual definition needs a `create` call", "add `create:` with the request that issues a new key, and `secret:` / `key_id:` pointers into its answer");
                }
                if !h.in_place && !ops("revoke") {
                    self.err("/http", "a dual definition needs a `revoke` call", "add `revoke:` (the request that deletes a key by `{{ key_id }}`), or set `in_place: true` when create replaces the old value itself");
                }
                if !h.in_place && !ops("list") {
                    self.err("/http", "a dual definition needs a `list` call", "add `list:`: rekey checks the quota and finds keys it created before a crash with it");
                }
                if ops("change") {
                    self.err(
                        "/http/change",
                        "`change` is for single (password) kinds",
                        "this file says `kind: dual`: remove `change` or make the kind single",
                    );
                }
            }
            Kind::Single => {
                if !ops("change") {
                    self.err("/http", "a single definition needs a `change` call", "add `change:` with the request that sets `{{ secret.new | expose }}` in its body");
                }
                for op in [
                    "create",
                    "deactivate",
                    "revoke",
                    "list",
                    "read_old",
                    "last_used",
                ] {
                    if ops(op) {
                        self.err(&format!("/http/{op}"), format!("`{op}` is for dual (key) kinds"), "this file says `kind: single`: the value is changed in place with `change`");
                    }
                }
                if h.in_place {
                    self.err(
                        "/http/in_place",
                        "`in_place` is for dual kinds",
                        "remove it: single kinds always change in place",
                    );
                }
                if h.generate.is_some() {
                    self.err(
                        "/http/generate",
                        "`generate` is for dual kinds",
                        "single kinds get a password generated by the playbook's password policy",
                    );
                }
            }
            Kind::Manual => self.err(
                "/http",
                "a manual provider cannot have an http definition",
                "remove `http:` or change `kind`",
            ),
        }
        if h.in_place {
            for op in ["list", "deactivate", "revoke"] {
                if ops(op) {
                    self.err(&format!("/http/{op}"), format!("`{op}` is not used with `in_place: true`"), "an in-place rotation kills the old value itself and leaves no key to delete; remove this call");
                }
            }
        }
        if let Some(base) = self.render_check("/http/base_url", &h.base_url, Slot::BaseUrl) {
            match template::parse_base_url(&base) {
                Ok(_) => {}
                Err(e) => self.err(
                    "/http/base_url",
                    format!("base_url `{base}` is not usable: {e}"),
                    "use an absolute https URL with no query, e.g. https://api.example.com/v1",
                ),
            }
        }
        if !h.base_url.starts_with("https://") {
            self.err("/http/base_url", "base_url must start with `https://`", "only the host may come from a template (e.g. https://{{ settings.org }}.okta.com); an instance's `base_url` setting may point at a loopback stub over http");
        } else if let Some(rest) = h.base_url.strip_prefix("https://") {
            let path_part = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
            if path_part.contains("{{") || path_part.contains("{%") {
                self.err(
                    "/http/base_url",
                    "only the host part of base_url may be templated",
                    "move the templated part into each call's `path`",
                );
            }
        }
        self.check_auth("/http/auth", &h.auth, false);
        for (name, value) in &h.headers {
            let p = format!("/http/headers/{}", yaml::escape(name));
            self.check_header_name(&p, name);
            self.render_check(&p, value, Slot::Plain);
        }
        if h.rate_limit.statuses.is_empty() {
            self.err(
                "/http/rate_limit/statuses",
                "no rate-limit status",
                "keep the default [429] unless the provider documents another",
            );
        }
        if let Some(g) = h.generate
            && g == Generate::SshEd25519
            && let Some(c) = &h.create
            && c.secret.is_some()
        {
            self.err(
                "/http/create/secret",
                "`secret` cannot be read from the answer when rekey generates the key pair",
                "remove `secret:`: the private key rekey generated is the secret",
            );
        }
        for op in OPERATIONS {
            if *op == "lookup" {
                for (i, call) in h.lookup.iter().enumerate() {
                    let base =
                        if h.lookup.len() == 1 && self.root.pointer("/http/lookup/0").is_none() {
                            "/http/lookup".to_owned()
                        } else {
                            format!("/http/lookup/{i}")
                        };
                    self.check_call(op, &base, call, h);
                }
            } else if let Some(call) = h.call(op) {
                self.check_call(op, &format!("/http/{op}"), call, h);
            }
        }
    }

    fn check_header_name(&mut self, pointer: &str, name: &str) {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.err(
                pointer,
                format!("`{name}` is not a valid header name"),
                "use letters, digits and `-`",
            );
        }
    }

    fn check_auth(&mut self, base: &str, auth: &[AuthDef], is_call: bool) {
        for (i, a) in auth.iter().enumerate() {
            let p = format!("{base}/{i}");
            let ok_secret = a.secret == "new"
                || a.secret.strip_prefix("admin.").is_some_and(|f| {
                    !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            if !ok_secret {
                self.err(&format!("{p}/secret"), format!("`{}` names no secret", a.secret), "use `admin.<field>` (a field of the admin credential, e.g. admin.token) or `new` (the value being verified)");
            }
            if a.secret == "new" && !is_call {
                self.err(&format!("{p}/secret"), "the definition's `auth` authenticates management calls with the admin credential", "use `new` only in a call's own `auth` (verify)");
            }
            match a.scheme {
                Scheme::Header => match &a.name {
                    Some(n) => self.check_header_name(&format!("{p}/name"), n),
                    None => self.err(&p, "a `header` auth needs a `name`", "add `name:` with the header's name, e.g. DD-API-KEY"),
                },
                Scheme::Basic => match &a.username {
                    Some(u) => {
                        self.render_check(&format!("{p}/username"), u, Slot::Plain);
                    }
                    None => self.err(&p, "a `basic` auth needs a `username` template", "add `username:` (e.g. \"{{ settings.account_sid }}\"); the secret is the password"),
                },
                Scheme::Form => {
                    if a.name.is_none() {
                        self.err(&p, "a `form` auth needs a `name`", "add `name:` with the form field, e.g. client_secret");
                    }
                    if !is_call {
                        self.err(&p, "a `form` auth belongs to one call", "put it in the `auth` of the call whose `form` carries it (verify)");
                    }
                }
                Scheme::Bearer => {}
            }
            if !matches!(a.scheme, Scheme::Header | Scheme::Form) && a.name.is_some()
                || a.scheme != Scheme::Header && a.prefix.is_some()
            {
                self.err(
                    &p,
                    "`name` applies to the `header` and `form` schemes, `prefix` to `header`",
                    "use the scheme they belong to, or remove them",
                );
            }
            if let Some(from) = &a.username_from {
                let ok = a.scheme == Scheme::Basic
                    && from.strip_prefix("admin.").is_some_and(|f| {
                        !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                if !ok {
                    self.err(&format!("{p}/username_from"), "`username_from` names a field of the admin credential for a `basic` auth", "write `username_from: admin.username` beside `username:` (used when the field is absent)");
                }
            }
            if let Some(when) = &a.when {
                self.render_check(&format!("{p}/when"), when, Slot::Plain);
            }
        }
    }

    fn check_call(&mut self, op: &str, base: &str, c: &CallDef, h: &HttpDef) {
        let base = base.to_owned();
        let field = |f: &str| format!("{base}/{f}");
        let is_list = op == "list" || op == "lookup";
        let path = self.render_check(&field("path"), &c.path, Slot::Path);
        if path.is_some_and(|p| !p.starts_with('/')) {
            self.err(
                &field("path"),
                "a path must start with `/`",
                "write the path under base_url, e.g. /v3/api_keys; absolute URLs are refused",
            );
        }
        for (k, v) in &c.query {
            self.render_check(
                &format!("{}/{}", field("query"), yaml::escape(k)),
                v,
                Slot::Plain,
            );
        }
        for (k, v) in &c.headers {
            let p = format!("{}/{}", field("headers"), yaml::escape(k));
            self.check_header_name(&p, k);
            self.render_check(&p, v, Slot::Plain);
        }
        if let Some(body) = &c.body {
            if c.form.is_some() {
                self.err(
                    &field("form"),
                    "a call has either `body` (JSON) or `form`, not both",
                    "keep the one the API documents",
                );
            }
            self.check_body(&field("body"), body, op);
        }
        if let Some(form) = &c.form {
            for (k, v) in form {
                self.render_check(
                    &format!("{}/{}", field("form"), yaml::escape(k)),
                    v,
                    if op == "change" {
                        Slot::Body
                    } else {
                        Slot::Plain
                    },
                );
            }
        }
        if let Some(a) = &c.auth {
            self.check_auth(&field("auth"), a, true);
            if c.form.is_none() && a.iter().any(|a| a.scheme == Scheme::Form) {
                self.err(
                    &field("auth"),
                    "a `form` auth needs the call to send a `form`",
                    "add `form:` with the call's other fields",
                );
            }
        }
        if c.expect.is_empty() {
            self.err(
                &field("expect"),
                "no expected status",
                "list the statuses the API documents for success, e.g. [200, 201]",
            );
        }
        for s in c.expect.iter().chain(&c.gone).chain(&c.refused) {
            if !(100..=599).contains(s) {
                self.err(
                    &base,
                    format!("{s} is not an HTTP status"),
                    "use a status from 100 to 599",
                );
            }
        }
        let allowed = |f: &str| -> bool {
            match f {
                "gone" => matches!(op, "deactivate" | "revoke" | "read_old" | "last_used"),
                "refused" | "check" | "refused_when" => op == "verify",
                "secret" | "key_id_value" => op == "create",
                "key_id" => op == "create" || is_list,
                "items" | "where" => is_list || op == "verify",
                "paginate" => is_list,
                "tag" | "created_at" | "active" => op == "list",
                "last_used" => matches!(op, "list" | "last_used"),
                "bind" => matches!(op, "lookup" | "read_old"),
                _ => true,
            }
        };
        let present: [(&str, bool); 15] = [
            ("gone", !c.gone.is_empty()),
            ("refused", !c.refused.is_empty()),
            ("check", !c.check.is_empty()),
            ("refused_when", !c.refused_when.is_empty()),
            ("secret", c.secret.is_some()),
            ("key_id_value", c.key_id_value.is_some()),
            ("key_id", c.key_id.is_some()),
            ("items", c.items.is_some()),
            ("where", !c.filter.is_empty()),
            ("paginate", c.paginate.is_some()),
            ("tag", c.tag.is_some()),
            ("created_at", c.created_at.is_some()),
            ("active", c.active.is_some()),
            ("bind", !c.bind.is_empty()),
            ("last_used", c.last_used.is_some()),
        ];
        for (f, is) in present {
            if is && !allowed(f) {
                self.err(
                    &field(f),
                    format!("`{f}` does not apply to `{op}`"),
                    match f {
                        "gone" => "only deactivate, revoke, read_old and last_used treat statuses as \"already gone\"",
                        "refused" | "check" | "refused_when" => "only verify decides whether a credential works",
                        "secret" | "key_id_value" => "only create reads a new secret",
                        "bind" => "only lookup and read_old bind values",
                        _ => "only list (and lookup) read items",
                    }
                    .to_owned(),
                );
            }
        }
        let pointers = [
            ("secret", c.secret.as_deref()),
            ("key_id", c.key_id.as_deref()),
            ("items", c.items.as_deref()),
            ("tag", c.tag.as_deref()),
            ("created_at", c.created_at.as_deref()),
            ("last_used", c.last_used.as_deref()),
        ];
        for (f, p) in pointers {
            if let Some(p) = p
                && !(p.is_empty() || p.starts_with('/'))
            {
                self.err(
                    &field(f),
                    format!("`{p}` is not a JSON pointer"),
                    "a JSON pointer starts with `/`, e.g. /data/id (\"\" is the whole answer)",
                );
            }
        }
        for (p, v) in c
            .filter
            .iter()
            .chain(c.check.iter())
            .chain(c.refused_when.iter())
            .chain(c.bind.iter().map(|(k, v)| (v, k)))
        {
            if !(p.is_empty() || p.starts_with('/')) {
                self.err(
                    &base,
                    format!("`{p}` is not a JSON pointer"),
                    "a JSON pointer starts with `/`, e.g. /name",
                );
            }
            let _ = v;
        }
        for (which, map) in [
            ("where", &c.filter),
            ("check", &c.check),
            ("refused_when", &c.refused_when),
        ] {
            for (k, v) in map {
                self.render_check(
                    &format!("{}/{}", field(which), yaml::escape(k)),
                    v,
                    Slot::Plain,
                );
            }
        }
        if let Some(p) = &c.paginate
            && let Err(e) = p.mode()
        {
            self.err(&field("paginate"), "unclear pagination", e);
        }
        if let Some(a) = &c.active
            && !a.pointer.starts_with('/')
        {
            self.err(
                &field("active/pointer"),
                format!("`{}` is not a JSON pointer", a.pointer),
                "e.g. /status",
            );
        }
        match op {
            "create" => {
                if c.secret.is_none() && h.generate.is_none() {
                    self.err(&base, "create does not say where the new secret is", "add `secret:` with a JSON pointer into the answer, e.g. /data/attributes/key");
                }
                match (&c.key_id, &c.key_id_value) {
                    (None, None) => self.err(&base, "create does not say where the new key's id is", "add `key_id:` (a JSON pointer into the answer) or `key_id_value:` (a template)"),
                    (Some(_), Some(_)) => self.err(&field("key_id_value"), "both `key_id` and `key_id_value`", "keep one"),
                    (None, Some(v)) => {
                        self.render_check(&field("key_id_value"), v, Slot::Plain);
                    }
                    _ => {}
                }
            }
            "list" | "lookup" => {
                if c.items.is_none() {
                    self.err(&base, format!("{op} does not say where the items are"), "add `items:` with a JSON pointer to the array (\"\" when the answer is the array)");
                }
                if op == "list" && c.key_id.is_none() {
                    self.err(
                        &base,
                        "list does not say where each key's id is",
                        "add `key_id:` with a JSON pointer into one item, e.g. /id",
                    );
                }
                if op == "lookup" && c.bind.is_empty() {
                    self.err(
                        &base,
                        "a lookup that binds nothing is useless",
                        "add `bind: { user_id: /id }` and use `{{ found.user_id }}`",
                    );
                }
            }
            "last_used" if c.last_used.is_none() => {
                self.err(
                    &base,
                    "last_used does not say where the key's last use is",
                    "add `last_used:` with a JSON pointer into the answer, e.g. /last_used_at",
                );
            }
            "read_old" => {
                if c.bind.is_empty() {
                    self.err(&base, "read_old binds nothing", "add `bind: { scopes: /data/attributes/scopes }` and use `{{ old.scopes }}` in create");
                }
                if h.create.is_none() || h.in_place {
                    self.err(
                        &base,
                        "read_old reads the key a new one replaces",
                        "it applies to dual definitions whose create issues a second key",
                    );
                }
            }
            "verify" => {
                if c.auth.is_none() && c.body.is_none() && c.form.is_none() && c.check.is_empty() {
                    self.err(&base, "verify never presents the new value", "add `auth: [{ scheme: bearer, secret: new }]` (or basic / header), or a `check:` for generated key pairs");
                }
                if c.refused.is_empty() && c.check.is_empty() {
                    self.err(&field("refused"), "verify cannot tell a refused credential from an error", "list the statuses meaning \"this credential does not work\", e.g. [401, 403]");
                }
            }
            _ => {}
        }
    }

    fn check_body(&mut self, pointer: &str, body: &serde_json::Value, op: &str) {
        match body {
            serde_json::Value::String(s) => {
                self.render_check(
                    pointer,
                    s,
                    if op == "change" {
                        Slot::Body
                    } else {
                        Slot::Plain
                    },
                );
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_body(&format!("{pointer}/{i}"), v, op);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    self.check_body(&format!("{pointer}/{}", yaml::escape(k)), v, op);
                }
            }
            _ => {}
        }
    }

    /// Renders `source` against placeholders for everything a template may name,
    /// reporting syntax errors, unknown names and secrets used where they do not
    /// belong. Returns the rendered text.
    fn render_check(&mut self, pointer: &str, source: &str, slot: Slot) -> Option<String> {
        let exposes = source.contains("expose");
        if exposes && slot != Slot::Body {
            self.err(pointer, "a secret can only be exposed in the body of a `change` call", "credentials for authentication go in `auth:` (`secret: admin.<field>` or `secret: new`), never in paths, queries, headers or create bodies");
            return None;
        }
        if !self.render_templates {
            return None;
        }
        match template::dry_render(source, self.t, slot == Slot::BaseUrl) {
            Ok(text) => Some(text),
            Err(template::DryError::Unexposed) => {
                self.err(pointer, "this template prints a secret without `| expose`", "write `{{ secret.new | expose }}` where the value must be sent; anything else is refused so a secret cannot leak by accident");
                None
            }
            Err(template::DryError::Template { message, hint }) => {
                self.err(pointer, format!("template error: {message}"), hint);
                None
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    BaseUrl,
    Path,
    Plain,
    /// The body of a `change`: the only place a secret may be exposed.
    Body,
}

/// "did you mean" over the known operation names, for the catalog's own checks.
pub fn suggest_operation(given: &str) -> Option<String> {
    did_you_mean(given, OPERATIONS.iter().copied())
}
