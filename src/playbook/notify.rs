//! `notify:`: the webhooks a run tells what happens (start, end, each quarantine,
//! each credential awaiting an operator, a retired key used again). The raw form
//! is in `model.rs`; this checks it (pure) into [`Webhook`]s. Delivery is
//! `crate::notify`.
//!
//! A webhook URL can be a credential (Slack's incoming webhook URLs are), so it
//! is named by `url_env` and read like an admin credential; a plain `url` is for
//! endpoints that authenticate otherwise (`authorization_env`).

use super::model::RawNotify;
use serde::Serialize;

/// What a webhook is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    RunStart,
    RunEnd,
    Quarantined,
    AwaitingOperator,
    /// `rekey watch` found a key used after a run retired it.
    RetiredKeyUsed,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::RunStart,
        Event::RunEnd,
        Event::Quarantined,
        Event::AwaitingOperator,
        Event::RetiredKeyUsed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::RunStart => "run_start",
            Event::RunEnd => "run_end",
            Event::Quarantined => "quarantined",
            Event::AwaitingOperator => "awaiting_operator",
            Event::RetiredKeyUsed => "retired_key_used",
        }
    }
}

/// The body a webhook gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// rekey's event document (`docs/notifications.md`).
    Json,
    /// `{"text": ...}`, what Slack-compatible incoming webhooks take.
    Slack,
}

/// Where the URL comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    Plain(String),
    /// An environment variable holding it (read as a secret).
    Env(String),
}

/// A validated webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// What messages call it (never its URL).
    pub name: String,
    pub format: Format,
    pub url: Url,
    /// A variable holding the `Authorization` header's value.
    pub authorization_env: Option<String>,
    /// The events it gets.
    pub events: Vec<Event>,
}

/// A problem with `notify:`: the message, the JSON pointer it is at, and a fix.
pub struct Problem {
    pub message: String,
    pub pointer: String,
    pub help: String,
}

/// The environment variables `notify:` reads secrets from.
pub fn secret_env(raw: &[RawNotify]) -> impl Iterator<Item = &str> {
    raw.iter().flat_map(|n| {
        n.url_env
            .as_deref()
            .into_iter()
            .chain(n.authorization_env.as_deref())
    })
}

/// Checks `notify:` (pure); every problem at once.
pub fn check(raw: &[RawNotify]) -> Result<Vec<Webhook>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut hooks = Vec::new();
    let mut problem = |message: String, pointer: String, help: &str| {
        problems.push(Problem {
            message,
            pointer,
            help: help.to_owned(),
        })
    };
    let valid_env = |name: &str| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    };
    for (i, n) in raw.iter().enumerate() {
        let at = |field: &str| format!("/notify/{i}/{field}");
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| format!("webhook {}", i + 1));
        if raw
            .iter()
            .take(i)
            .any(|other| other.name.is_some() && other.name == n.name)
        {
            problem(
                format!("two webhooks are named `{name}`"),
                at("name"),
                "give each webhook its own name: messages name webhooks, never their URLs",
            );
        }
        let format = match n.format.as_deref() {
            None | Some("json") => Format::Json,
            Some("slack") => Format::Slack,
            Some(other) => {
                problem(
                    format!("webhook `{name}`: `{other}` is not a format"),
                    at("format"),
                    "use `json` (rekey's event document) or `slack` (Slack-compatible incoming webhooks)",
                );
                Format::Json
            }
        };
        let url = match (&n.url, &n.url_env) {
            (Some(u), None) => match crate::net::parse_endpoint(u) {
                Ok(_) => Some(Url::Plain(u.trim().to_owned())),
                Err(why) => {
                    problem(
                        format!("webhook `{name}`: its URL is refused: {why}"),
                        at("url"),
                        "notifications name credentials and runs: send them over https (plain http only to this machine)",
                    );
                    None
                }
            },
            (None, Some(var)) if valid_env(var) => Some(Url::Env(var.clone())),
            (None, Some(var)) => {
                problem(
                    format!("webhook `{name}`: `{var}` is not an environment variable name"),
                    at("url_env"),
                    "letters, digits and `_`, not starting with a digit",
                );
                None
            }
            (Some(_), Some(_)) => {
                problem(
                    format!("webhook `{name}` has both `url` and `url_env`"),
                    at("url"),
                    "keep one: `url_env` for a URL that is itself a credential (Slack's are), `url` otherwise",
                );
                None
            }
            (None, None) => {
                problem(
                    format!("webhook `{name}` has no URL"),
                    format!("/notify/{i}"),
                    "add `url_env: SLACK_WEBHOOK_URL` (a URL that is a credential) or `url: https://...`",
                );
                None
            }
        };
        if let Some(var) = &n.authorization_env
            && !valid_env(var)
        {
            problem(
                format!("webhook `{name}`: `{var}` is not an environment variable name"),
                at("authorization_env"),
                "letters, digits and `_`, not starting with a digit",
            );
        }
        let mut events = Vec::new();
        for (j, e) in n.events.iter().enumerate() {
            match Event::ALL.iter().find(|k| k.as_str() == e) {
                Some(k) => events.push(*k),
                None => problem(
                    format!("webhook `{name}`: `{e}` is not an event"),
                    format!("/notify/{i}/events/{j}"),
                    "events: run_start, run_end, quarantined, awaiting_operator, retired_key_used (none listed: all of them)",
                ),
            }
        }
        if events.is_empty() {
            events = Event::ALL.to_vec();
        }
        if let Some(url) = url {
            hooks.push(Webhook {
                name,
                format,
                url,
                authorization_env: n.authorization_env.clone(),
                events,
            });
        }
    }
    if problems.is_empty() {
        Ok(hooks)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: Option<&str>, url_env: Option<&str>) -> RawNotify {
        RawNotify {
            name: Some("ops".into()),
            format: None,
            url: url.map(str::to_owned),
            url_env: url_env.map(str::to_owned),
            authorization_env: None,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_webhook_needs_one_url_sent_safely() {
        assert!(check(&[raw(Some("https://hooks.example.com/x"), None)]).is_ok());
        assert!(check(&[raw(Some("http://127.0.0.1:9/x"), None)]).is_ok());
        assert!(check(&[raw(None, Some("SLACK_URL"))]).is_ok());
        for bad in [
            raw(Some("http://hooks.example.com/x"), None),
            raw(None, None),
            raw(Some("https://a.example"), Some("SLACK_URL")),
            raw(None, Some("1BAD")),
        ] {
            assert!(check(&[bad]).is_err());
        }
    }

    #[test]
    fn events_default_to_all_and_unknown_ones_are_refused() {
        let hooks = check(&[raw(None, Some("U"))]).ok().unwrap();
        assert_eq!(hooks[0].events, Event::ALL.to_vec());
        let mut r = raw(None, Some("U"));
        r.events = vec!["run_end".into(), "run_ended".into()];
        let problems = check(&[r]).err().unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].pointer, "/notify/0/events/1");
    }
}
