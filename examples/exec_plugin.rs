//! A rekey exec plugin in Rust (protocol version 1, docs/exec-protocol.md): a
//! simulated API-key service for one kind of credential (`kind: dual`), with its
//! state in a JSON file and SHA-256 digests of the keys instead of the keys.
//!
//! ```sh
//! cargo build --example exec_plugin
//! # playbook: providers: { inhouse: { type: exec, settings: {
//! #   command: target/debug/examples/exec_plugin, args: [--state, /var/lib/x.json] } } }
//! ```
//!
//! It reads one JSON object per line on stdin and answers one per line on stdout;
//! its log goes to stderr, which rekey relays to its own log (so never a secret).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Store {
    path: std::path::PathBuf,
}

impl Store {
    fn load(&self) -> Value {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({ "accounts": {} }))
    }

    /// Atomic write: a crash leaves the old file or the new one.
    fn save(&self, state: &Value) -> Result<(), String> {
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(state.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("cannot save the state: {e}"))
    }
}

/// The result of one request, or an error kind and message.
fn handle(store: &Store, req: &Value) -> Result<Value, (&'static str, String)> {
    let op = req["op"].as_str().unwrap_or("");
    let account = req["account"]
        .as_str()
        .ok_or(("fatal", "credentials need an account".to_owned()))?;
    let mut state = store.load();
    if state["accounts"][account].is_null() {
        state["accounts"][account] = json!({ "keys": [] });
    }
    let keys = state["accounts"][account]["keys"]
        .as_array_mut()
        .ok_or(("fatal", "corrupt state".to_owned()))?;
    let key_id = req["key_id"].as_str();
    let result = match op {
        "preflight" => json!({}),
        "list" => {
            json!({ "keys": keys.iter().map(|k| json!({ "id": k["id"], "active": k["active"], "created_at": k["created_at"], "tag": k["tag"] })).collect::<Vec<_>>() })
        }
        "create" => {
            if keys.len() >= 2 {
                return Err(("fatal", "quota: 2 keys per account".into()));
            }
            let secret = format!("rs_{}", hex::encode(rand::random::<[u8; 20]>()));
            let id = format!("rs-{}", hex::encode(rand::random::<[u8; 4]>()));
            keys.push(json!({ "id": id, "sha256": digest(&secret), "active": true, "created_at": now(), "tag": req["tag"] }));
            store.save(&state).map_err(|e| ("transient", e))?;
            return Ok(json!({ "key_id": id, "secret": secret }));
        }
        "verify" => {
            let d = digest(req["secret"].as_str().unwrap_or(""));
            let valid = keys.iter().any(|k| {
                k["id"].as_str() == key_id && k["active"] == true && k["sha256"] == d.as_str()
            });
            return Ok(json!({ "valid": valid }));
        }
        "deactivate" => {
            for k in keys.iter_mut().filter(|k| k["id"].as_str() == key_id) {
                k["active"] = json!(false);
            }
            json!({})
        }
        "revoke" => {
            keys.retain(|k| k["id"].as_str() != key_id);
            json!({})
        }
        other => return Err(("fatal", format!("unsupported operation `{other}`"))),
    };
    store.save(&state).map_err(|e| ("transient", e))?;
    Ok(result)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args
        .iter()
        .position(|a| a == "--state")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!("usage: exec_plugin --state FILE");
        std::process::exit(2);
    };
    let store = Store { path: path.into() };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            eprintln!("exec_plugin: skipped a line that is not JSON");
            continue;
        };
        let answer = match msg["type"].as_str() {
            Some("hello") => {
                if !msg["protocol_versions"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!(1)))
                {
                    eprintln!("exec_plugin: rekey does not speak protocol version 1");
                    std::process::exit(2);
                }
                json!({ "type": "hello", "protocol_version": 1, "name": "exec_plugin" })
            }
            Some("request") => {
                eprintln!("exec_plugin: {} for {}", msg["op"], msg["credential"]);
                match handle(&store, &msg) {
                    Ok(result) => json!({ "type": "response", "id": msg["id"], "result": result }),
                    Err((kind, message)) => {
                        json!({ "type": "response", "id": msg["id"], "error": { "kind": kind, "message": message } })
                    }
                }
            }
            // Unknown kinds are skipped, as the protocol asks.
            _ => continue,
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}
