//! The vendors' published API descriptions, as extracted into `tests/contracts/`
//! (one JSON file per vendor, naming its sources; see tests/contracts/README.md),
//! and the checks made with them:
//!
//! - `check_request`: which documented operation a request is (method and path
//!   template, one raw segment per path parameter, so an unencoded `/` in a value
//!   is a different path), and everything wrong with it: path, query and header
//!   parameters (required, known, typed), the body against the operation's JSON
//!   Schema (JSON or form-encoded; request bodies are strict: an undocumented
//!   field is a violation), and the credential the operation's security asks for.
//! - `check_response`: a stub's answer against the documented answer for that
//!   status (or the vendor's documented error body), so a stub cannot say what
//!   the vendor never would.
//!
//! Schemas are JSON Schema 2020-12 already (the extraction turned OpenAPI 3.0
//! `nullable`, `readOnly` and `writeOnly` into it) and are checked with the
//! `jsonschema` crate.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One vendor's operations and what they require.
pub struct Contract {
    pub vendor: String,
    pub operations: Vec<Operation>,
    schemes: HashMap<String, Value>,
    /// Error bodies the vendor documents outside its description, by status.
    errors: HashMap<u16, jsonschema::Validator>,
    /// Credential kinds the vendor's docs say an operation refuses.
    pub refusals: Vec<Refusal>,
}

pub struct Operation {
    pub id: String,
    pub method: String,
    pub path: String,
    segments: Vec<Segment>,
    params: Vec<Param>,
    body: Option<Body>,
    /// Status (`200`, or a class such as `4XX`) → the answer's schema, if it has one.
    responses: HashMap<String, Option<jsonschema::Validator>>,
    security: Vec<Vec<String>>,
}

pub struct Refusal {
    pub credential: String,
    pub operations: Vec<String>,
    pub status: u16,
}

enum Segment {
    Literal(String),
    /// `{name}` with optional literal text around it in the same segment
    /// (Twilio's `{Sid}.json`).
    Param {
        prefix: String,
        name: String,
        suffix: String,
    },
}

struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Value,
    validator: jsonschema::Validator,
}

struct Body {
    required: bool,
    content: Vec<(String, jsonschema::Validator)>,
}

/// A request as it reached a stub.
pub struct Request<'a> {
    pub method: &'a str,
    /// The raw (still percent-encoded) path under the API's base path.
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a axum::http::HeaderMap,
    pub body: &'a [u8],
}

fn compile(schema: &Value, what: &str) -> jsonschema::Validator {
    jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"))
}

fn errors_of(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| {
            let at = e.instance_path().as_str().to_owned();
            format!("{} {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect()
}

impl Contract {
    /// The contract of `vendor` (`tests/contracts/<vendor>.json`), parsed once.
    pub fn load(vendor: &str) -> Arc<Contract> {
        static CACHE: OnceLock<Mutex<HashMap<String, Arc<Contract>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap();
        cache
            .entry(vendor.to_owned())
            .or_insert_with(|| {
                let path = crate::support::repo_root()
                    .join("tests/contracts")
                    .join(format!("{vendor}.json"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Arc::new(Contract::parse(
                    &serde_json::from_str(&text).expect("contract is JSON"),
                ))
            })
            .clone()
    }

    fn parse(doc: &Value) -> Contract {
        let vendor = doc["vendor"].as_str().unwrap_or_default().to_owned();
        let operations = doc["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| Operation::parse(o, &vendor))
            .collect();
        let errors = doc["error_responses"]["statuses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(s, schema)| {
                (
                    s.parse::<u16>().expect("status"),
                    compile(schema, &format!("{vendor} error {s}")),
                )
            })
            .collect();
        let refusals = doc["refusals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Refusal {
                credential: r["credential"].as_str().unwrap_or_default().to_owned(),
                operations: r["operations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                status: r["status"].as_u64().unwrap_or(401) as u16,
            })
            .collect();
        let schemes = doc["security_schemes"]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Contract {
            vendor,
            operations,
            schemes,
            errors,
            refusals,
        }
    }

    /// The operation a method and raw path are, with the raw path parameters.
    pub fn find(&self, method: &str, path: &str) -> Option<(&Operation, Vec<(String, String)>)> {
        let raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.operations
            .iter()
            .filter(|o| o.method.eq_ignore_ascii_case(method))
            .filter_map(|o| o.bind(&raw).map(|params| (o, params)))
            // The most literal template wins (`/x/self` over `/x/{id}`).
            .max_by_key(|(o, _)| {
                o.segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count()
            })
    }

    /// The documented operation `req` is, with every way it departs from it.
    /// `Err` holds the violations; `Ok` means the request is as documented.
    pub fn check_request(
        &self,
        req: &Request<'_>,
    ) -> Result<&Operation, (Option<&Operation>, Vec<String>)> {
        let Some((op, path_params)) = self.find(req.method, req.path) else {
            return Err((
                None,
                vec![format!(
                    "{} {}: the {} description documents no such operation (check the path template and the encoding of each segment)",
                    req.method, req.path, self.vendor
                )],
            ));
        };
        let mut out = Vec::new();
        let what = format!("{} {} ({})", req.method, req.path, op.id);
        // Path parameters: decoded, then typed.
        for (name, raw) in &path_params {
            let decoded = percent_decode(raw);
            if let Some(p) = op
                .params
                .iter()
                .find(|p| p.location == "path" && &p.name == name)
            {
                let v = typed(&decoded, &p.schema);
                for e in errors_of(&p.validator, &v) {
                    out.push(format!(
                        "{what}: path parameter `{name}` = {decoded:?}: {e}"
                    ));
                }
            }
        }
        // Query parameters: known, typed, required ones present.
        let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query.as_bytes())
            .into_owned()
            .collect();
        for (k, v) in &query {
            match op
                .params
                .iter()
                .find(|p| p.location == "query" && &p.name == k)
            {
                Some(p) => {
                    for e in errors_of(&p.validator, &typed(v, &p.schema)) {
                        out.push(format!("{what}: query parameter `{k}` = {v:?}: {e}"));
                    }
                }
                None => out.push(format!(
                    "{what}: query parameter `{k}` is not documented for this operation"
                )),
            }
        }
        for p in op.params.iter().filter(|p| p.required) {
            let present = match p.location.as_str() {
                "query" => query.iter().any(|(k, _)| k == &p.name),
                "header" => req.headers.contains_key(p.name.as_str()),
                _ => true,
            };
            if !present {
                out.push(format!(
                    "{what}: required {} parameter `{}` is missing",
                    p.location, p.name
                ));
            }
        }
        // Body.
        let content_type = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let mut form: Option<Map<String, Value>> = None;
        match (&op.body, req.body.is_empty()) {
            (None, false) => out.push(format!("{what}: the operation takes no request body")),
            (Some(b), true) if b.required => {
                out.push(format!("{what}: the request body is required"))
            }
            (Some(b), false) => match b.content.iter().find(|(ct, _)| *ct == content_type) {
                None => out.push(format!(
                    "{what}: content type `{content_type}` is not one the operation takes ({})",
                    b.content
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some((ct, validator)) => {
                    let value = if ct.ends_with("json") {
                        match serde_json::from_slice::<Value>(req.body) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                out.push(format!("{what}: the body is not JSON: {e}"));
                                None
                            }
                        }
                    } else {
                        let mut m = Map::new();
                        for (k, v) in url::form_urlencoded::parse(req.body) {
                            m.insert(k.into_owned(), Value::String(v.into_owned()));
                        }
                        form = Some(m.clone());
                        Some(Value::Object(m))
                    };
                    if let Some(v) = value {
                        for e in errors_of(validator, &v) {
                            out.push(format!("{what}: body {e}"));
                        }
                    }
                }
            },
            _ => {}
        }
        // Credentials: one documented alternative must be complete.
        if !op.security.is_empty() {
            let ok = op.security.iter().any(|alt| {
                alt.iter()
                    .all(|scheme| self.presents(scheme, req.headers, form.as_ref()))
            });
            if !ok {
                let mut sent: Vec<String> = req.headers.keys().map(|k| k.to_string()).collect();
                sent.extend(
                    form.iter()
                        .flat_map(|f| f.keys().map(|k| format!("form:{k}"))),
                );
                out.push(format!(
                    "{what}: no credential the operation documents ({}); the request has {}",
                    op.security
                        .iter()
                        .map(|a| a.join(" + "))
                        .collect::<Vec<_>>()
                        .join(" | "),
                    sent.join(", ")
                ));
            }
        }
        if out.is_empty() {
            Ok(op)
        } else {
            Err((Some(op), out))
        }
    }

    /// Whether the request carries the credential of security scheme `name`.
    fn presents(
        &self,
        name: &str,
        headers: &axum::http::HeaderMap,
        form: Option<&Map<String, Value>>,
    ) -> bool {
        let Some(s) = self.schemes.get(name) else {
            return false;
        };
        let header = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        match (s["type"].as_str(), s["scheme"].as_str()) {
            (Some("http"), Some("basic")) => header("authorization")
                .strip_prefix("Basic ")
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .and_then(|raw| String::from_utf8(raw).ok())
                .is_some_and(|pair| {
                    pair.split_once(':')
                        .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
                }),
            (Some("http"), Some("bearer")) => header("authorization")
                .strip_prefix("Bearer ")
                .is_some_and(|t| !t.trim().is_empty()),
            (Some("apiKey"), _) => {
                let value = header(s["name"].as_str().unwrap_or(""));
                let prefix = s["prefix"].as_str().unwrap_or("");
                value
                    .strip_prefix(prefix)
                    .is_some_and(|v| !v.trim().is_empty())
            }
            (Some("form"), _) => form.is_some_and(|f| {
                s["fields"].as_array().into_iter().flatten().all(|k| {
                    k.as_str()
                        .and_then(|k| f.get(k))
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.is_empty())
                })
            }),
            _ => false,
        }
    }

    /// Everything wrong with answering `status` and `body` to operation `op`.
    pub fn check_response(&self, op: &Operation, status: u16, body: &[u8]) -> Vec<String> {
        let what = format!("answer {status} to {} {} ({})", op.method, op.path, op.id);
        let class = format!("{}XX", status / 100);
        let documented = op
            .responses
            .get(&status.to_string())
            .or_else(|| op.responses.get(&class));
        let validator = match documented {
            Some(v) => v.as_ref(),
            None => match self.errors.get(&status) {
                Some(v) => Some(v),
                None => {
                    return vec![format!(
                        "{what}: the {} description documents no {status} answer for this operation",
                        self.vendor
                    )];
                }
            },
        };
        match validator {
            None if body.is_empty() => Vec::new(),
            None => vec![format!(
                "{what}: the operation documents no body for {status}"
            )],
            Some(v) => match serde_json::from_slice::<Value>(body) {
                Ok(value) => errors_of(v, &value)
                    .into_iter()
                    .map(|e| format!("{what}: {e}"))
                    .collect(),
                Err(_) => vec![format!(
                    "{what}: the documented body is JSON, the stub's is not"
                )],
            },
        }
    }

    /// The operation ids `credential` may not call (a vendor's documented refusals).
    pub fn refused(&self, credential: &str, op: &Operation) -> Option<u16> {
        self.refusals
            .iter()
            .find(|r| r.credential == credential && r.operations.contains(&op.id))
            .map(|r| r.status)
    }
}

impl Operation {
    fn parse(o: &Value, vendor: &str) -> Operation {
        let id = o["operation_id"].as_str().unwrap_or_default().to_owned();
        let path = o["path"].as_str().unwrap_or_default().to_owned();
        let segments = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match (s.find('{'), s.find('}')) {
                (Some(a), Some(b)) if a < b => Segment::Param {
                    prefix: s[..a].to_owned(),
                    name: s[a + 1..b].to_owned(),
                    suffix: s[b + 1..].to_owned(),
                },
                _ => Segment::Literal(s.to_owned()),
            })
            .collect();
        let params = o["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let schema = p
                    .get("schema")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                Param {
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                    location: p["in"].as_str().unwrap_or_default().to_owned(),
                    required: p["required"].as_bool().unwrap_or(false),
                    validator: compile(&schema, &format!("{vendor} {id} parameter")),
                    schema,
                }
            })
            .collect();
        let body = o.get("request_body").map(|b| Body {
            required: b["required"].as_bool().unwrap_or(false),
            content: b["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(ct, schema)| {
                    (
                        ct.to_ascii_lowercase(),
                        compile(schema, &format!("{vendor} {id} body")),
                    )
                })
                .collect(),
        });
        let responses = o["responses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(status, r)| {
                (
                    status.clone(),
                    r.get("schema")
                        .map(|s| compile(s, &format!("{vendor} {id} {status}"))),
                )
            })
            .collect();
        let security = o["security"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|alt| {
                alt.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .collect();
        Operation {
            id,
            method: o["method"].as_str().unwrap_or_default().to_owned(),
            path,
            segments,
            params,
            body,
            responses,
            security,
        }
    }

    /// The raw path parameters when `raw` (the request's segments) fits the template.
    fn bind(&self, raw: &[&str]) -> Option<Vec<(String, String)>> {
        if raw.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (seg, r) in self.segments.iter().zip(raw) {
            match seg {
                Segment::Literal(l) => {
                    if l != r {
                        return None;
                    }
                }
                Segment::Param {
                    prefix,
                    name,
                    suffix,
                } => {
                    let v = r
                        .strip_prefix(prefix.as_str())?
                        .strip_suffix(suffix.as_str())?;
                    if v.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), v.to_owned()));
                }
            }
        }
        Some(params)
    }
}

/// A query or path value typed the way its schema reads it.
fn typed(v: &str, schema: &Value) -> Value {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"integer")
        && let Ok(n) = v.parse::<i64>()
    {
        return Value::from(n);
    }
    if types.contains(&"number")
        && let Ok(n) = v.parse::<f64>()
    {
        return Value::from(n);
    }
    if types.contains(&"boolean") && (v == "true" || v == "false") {
        return Value::Bool(v == "true");
    }
    Value::String(v.to_owned())
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_contract_compiles_and_names_its_sources() {
    for vendor in [
        "twilio",
        "sendgrid",
        "okta",
        "cloudflare",
        "datadog",
        "jumpcloud",
        "github",
        "gitlab",
    ] {
        let path = crate::support::repo_root()
            .join("tests/contracts")
            .join(format!("{vendor}.json"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let sources = doc["sources"].as_array().expect("sources");
        for s in sources {
            assert!(
                s["url"].is_string()
                    || (s["repository"].is_string()
                        && s["commit"].as_str().is_some_and(|c| c.len() == 40)
                        && s["licence"].is_string()),
                "{vendor}: a source names its repository, commit and licence, or a URL: {s}"
            );
        }
        let c = Contract::load(vendor);
        assert!(!c.operations.is_empty(), "{vendor}");
        for op in &c.operations {
            let src = doc["operations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["operation_id"] == op.id.as_str())
                .unwrap()["source"]
                .as_u64()
                .expect("each operation names its source") as usize;
            assert!(src < sources.len(), "{vendor} {}", op.id);
        }
    }
}
