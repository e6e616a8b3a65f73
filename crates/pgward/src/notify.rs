//! Alerts and heartbeats: `[[notify]]` targets told how a command went.
//!
//! - Uptime Kuma push: `GET URL?status=up|down&msg=…&ping=MS`.
//! - healthchecks.io and compatible: `POST URL/start` when a run starts,
//!   `POST URL` (success) or `POST URL/fail` with the summary as the body.
//! - A webhook: `POST URL` with the command's JSON document.
//!
//! Success is only ever sent after the outcome is final (a backup
//! committed, every step of a run done). A delivery that fails never
//! changes the command's verdict or exit code: it is reported beside it.
//! URLs carry tokens: they are secrets, read from a file, an environment
//! variable or the (private) configuration, and only ever shown masked.

use crate::config::{NotifyConfig, NotifyEvent, NotifyKind, NotifyOn, parse_duration};
use crate::connection::Env;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The default per-attempt timeout (connect and total).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default number of attempts after the first.
pub const DEFAULT_RETRIES: u32 = 2;

/// What a command reports to its targets.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub event: NotifyEvent,
    pub ok: bool,
    /// One line: what happened, or the cause of the failure.
    pub summary: String,
    /// How long the command took.
    pub duration: Duration,
    /// The command's JSON document (what a webhook receives).
    pub document: &'a serde_json::Value,
}

/// One attempt to tell one target, for the command's output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Delivery {
    /// The target's URL, masked.
    pub target: String,
    pub kind: NotifyKind,
    /// What was sent: `up`, `down`, `start`, `success`, `fail`, `post`.
    pub signal: String,
    pub delivered: bool,
    /// The HTTP status of the last attempt, if any answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub attempts: u32,
    /// Why it was not delivered (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Delivery {
    /// One line for people: `notified uptime-kuma https://kuma/api/push/**** (up)`.
    pub fn describe(&self) -> String {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        match &self.error {
            None => format!("notified {kind} {} ({})", self.target, self.signal),
            Some(error) => format!(
                "notification to {kind} {} ({}) FAILED after {} attempt(s): {error}",
                self.target, self.signal, self.attempts
            ),
        }
    }
}

/// Whether `target` wants this outcome.
fn wants(target: &NotifyConfig, event: NotifyEvent, ok: bool) -> bool {
    target.events.contains(&event)
        && target.on.contains(if ok {
            &NotifyOn::Success
        } else {
            &NotifyOn::Failure
        })
}

/// Tells every target that wants it how the command went.
pub fn send(targets: &[NotifyConfig], outcome: &Outcome, env: Env) -> Vec<Delivery> {
    targets
        .iter()
        .filter(|t| wants(t, outcome.event, outcome.ok))
        .map(|target| deliver(target, outcome, env))
        .collect()
}

/// The healthchecks `start` signal, to the targets that want the event
/// at all (so the service can time the run and see one that never ends).
pub fn start(targets: &[NotifyConfig], event: NotifyEvent, env: Env) -> Vec<Delivery> {
    targets
        .iter()
        .filter(|t| t.kind == NotifyKind::Healthchecks && t.events.contains(&event))
        .map(|target| {
            let url = match resolve_url(target, env) {
                Ok(url) => url,
                Err(e) => return failed(target, "start", "?", e),
            };
            let request = Request::Post {
                url: join(&url, "start"),
                body: String::new(),
                json: false,
            };
            attempt_all(target, &url, "start", request)
        })
        .collect()
}

fn deliver(target: &NotifyConfig, outcome: &Outcome, env: Env) -> Delivery {
    let url = match resolve_url(target, env) {
        Ok(url) => url,
        Err(e) => return failed(target, if outcome.ok { "up" } else { "down" }, "?", e),
    };
    let (signal, request) = match target.kind {
        NotifyKind::UptimeKuma => {
            let status = if outcome.ok { "up" } else { "down" };
            let base = url.split('?').next().unwrap_or(&url);
            (
                status,
                Request::Get(format!(
                    "{base}?status={status}&msg={}&ping={}",
                    percent_encode(&outcome.summary),
                    outcome.duration.as_millis()
                )),
            )
        }
        NotifyKind::Healthchecks => {
            let (signal, url) = if outcome.ok {
                ("success", url.clone())
            } else {
                ("fail", join(&url, "fail"))
            };
            (
                signal,
                Request::Post {
                    url,
                    body: outcome.summary.clone(),
                    json: false,
                },
            )
        }
        NotifyKind::Webhook => {
            let mut document = outcome.document.clone();
            if let Some(object) = document.as_object_mut() {
                object.insert(
                    "pgward-event".into(),
                    serde_json::to_value(outcome.event).unwrap_or_default(),
                );
                object.insert("ok".into(), outcome.ok.into());
                object.insert("summary".into(), outcome.summary.clone().into());
            }
            (
                "post",
                Request::Post {
                    url: url.clone(),
                    body: document.to_string(),
                    json: true,
                },
            )
        }
    };
    attempt_all(target, &url, signal, request)
}

enum Request {
    Get(String),
    Post {
        url: String,
        body: String,
        json: bool,
    },
}

/// Sends `request` with the target's timeout, retrying transport errors
/// and 5xx answers with backoff; a 4xx answer (a wrong token) is final.
fn attempt_all(target: &NotifyConfig, url: &str, signal: &str, request: Request) -> Delivery {
    let retries = target.retries.unwrap_or(DEFAULT_RETRIES);
    let agent = agent(target, 3);
    let mut delivery = Delivery {
        target: mask(url),
        kind: target.kind,
        signal: signal.to_string(),
        delivered: false,
        status: None,
        attempts: 0,
        error: None,
    };
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << (attempt - 1).min(4)));
        }
        delivery.attempts = attempt + 1;
        let result = match &request {
            Request::Get(url) => agent.get(url).call(),
            Request::Post { url, body, json } => agent
                .post(url)
                .header(
                    "Content-Type",
                    if *json {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    },
                )
                .send(body.as_str()),
        };
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                delivery.status = Some(status);
                if (200..300).contains(&status) {
                    delivery.delivered = true;
                    delivery.error = None;
                    return delivery;
                }
                delivery.error = Some(format!("HTTP {status}"));
                if status < 500 {
                    return delivery;
                }
            }
            Err(e) => delivery.error = Some(redact(&e.to_string(), url)),
        }
    }
    delivery
}

/// An HTTP client with the target's timeout for connecting and for the
/// whole exchange, answers of any status returned as answers.
fn agent(target: &NotifyConfig, redirects: u32) -> ureq::Agent {
    let timeout = target
        .timeout
        .as_deref()
        .and_then(|t| parse_duration(t).ok())
        .and_then(|d| d.try_into().ok())
        .unwrap_or(DEFAULT_TIMEOUT);
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(redirects)
        .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn failed(target: &NotifyConfig, signal: &str, url: &str, error: String) -> Delivery {
    Delivery {
        target: if url == "?" {
            describe_source(target)
        } else {
            mask(url)
        },
        kind: target.kind,
        signal: signal.to_string(),
        delivered: false,
        status: None,
        attempts: 0,
        error: Some(error),
    }
}

/// Where a target's URL comes from, for messages (never the URL).
fn describe_source(target: &NotifyConfig) -> String {
    match (&target.url, &target.url_file, &target.url_env) {
        (Some(url), _, _) => mask(url),
        (_, Some(file), _) => format!("(url-file {})", file.display()),
        (_, _, Some(var)) => format!("(url-env {var})"),
        _ => "(no url)".to_string(),
    }
}

/// The target's URL: from `url`, `url-file` (first line) or `url-env`.
pub fn resolve_url(target: &NotifyConfig, env: Env) -> std::result::Result<String, String> {
    let url = match (&target.url, &target.url_file, &target.url_env) {
        (Some(url), None, None) => url.trim().to_string(),
        (None, Some(file), None) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read url-file {}: {e}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, None, Some(var)) => env(var)
            .ok_or_else(|| format!("url-env {var} is not set"))?
            .trim()
            .to_string(),
        _ => return Err("set exactly one of url, url-file and url-env".to_string()),
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("{} is not an http(s) URL", mask(&url)));
    }
    Ok(url)
}

/// Checks a target's settings without sending anything; for `check`.
pub fn validate(target: &NotifyConfig) -> std::result::Result<(), String> {
    if let Some(timeout) = &target.timeout {
        parse_duration(timeout)?;
    }
    if target.events.is_empty() || target.on.is_empty() {
        return Err("its events or on list is empty: it would never be sent".to_string());
    }
    if target.retries.is_some_and(|r| r > 10) {
        return Err("retries above 10 would hold a run back for minutes".to_string());
    }
    Ok(())
}

/// Whether the target's host answers, without calling its URL (a push URL
/// called without a status could count as a heartbeat): a HEAD of the
/// site's root. The answer's status in words, or why it did not answer.
pub fn probe(target: &NotifyConfig, env: Env) -> std::result::Result<String, String> {
    let url = resolve_url(target, env)?;
    let origin = origin(&url);
    let agent = agent(target, 0);
    let started = Instant::now();
    match agent.head(&format!("{origin}/")).call() {
        Ok(response) => Ok(format!(
            "{origin}/ answered HTTP {} in {} ms (the push URL itself was not called)",
            response.status().as_u16(),
            started.elapsed().as_millis()
        )),
        Err(e) => Err(format!(
            "{origin}/ did not answer: {}",
            redact(&e.to_string(), &url)
        )),
    }
}

/// `scheme://host[:port]` of a URL, without any user information.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}")
}

/// A URL as it may be shown: its origin and the leading path segments
/// that are plain lowercase words (`/api/push/`); everything from the
/// first other segment on (tokens, keys, UUIDs, and what follows them,
/// such as a healthchecks slug after its ping key) and any query become
/// `****`.
pub fn mask(url: &str) -> String {
    let (_, rest) = url.split_once("://").unwrap_or(("", url));
    let path = rest
        .find('/')
        .map(|i| &rest[i..])
        .unwrap_or("")
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let mut shown = origin(url);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let plain = segment.len() <= 16
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_');
        if !plain {
            break;
        }
        shown.push('/');
        shown.push_str(segment);
    }
    shown.push_str("/****");
    shown
}

/// `text` with the URL, and every part of it [`mask`] hides, taken out.
fn redact(text: &str, url: &str) -> String {
    let masked = mask(url);
    let mut text = text.replace(url, &masked);
    let base = url.split(['?', '#']).next().unwrap_or(url);
    text = text.replace(base, &masked);
    let (_, rest) = base.split_once("://").unwrap_or(("", base));
    for part in rest.split(['/', '?', '&', '=', '@', ':']) {
        if part.len() >= 6 && !masked.contains(part) {
            text = text.replace(part, "****");
        }
    }
    text
}

fn join(url: &str, segment: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{}/{segment}", base.trim_end_matches('/'))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked_where_their_tokens_are() {
        assert_eq!(
            mask("https://kuma.example/api/push/AbCdEf123?status=up&msg=OK&ping="),
            "https://kuma.example/api/push/****"
        );
        assert_eq!(
            mask("https://hc-ping.com/5f0c9a1e-aaaa-bbbb-cccc-0123456789ab"),
            "https://hc-ping.com/****"
        );
        assert_eq!(
            mask("http://user:pw@host:8080/hook/"),
            "http://host:8080/hook/****"
        );
        // A healthchecks URL by ping key and slug: the key is the secret.
        assert_eq!(
            mask("https://hc-ping.com/PiNgKeY0secret123/nightly-backup"),
            "https://hc-ping.com/****"
        );
        assert_eq!(
            mask("https://hooks.slack.com/services/T0001/B0002/XXXXsecret"),
            "https://hooks.slack.com/services/****"
        );
        assert_eq!(mask("https://host"), "https://host/****");
        let error = "connection to https://kuma.example/api/push/AbCdEf123 refused (AbCdEf123)";
        let redacted = redact(error, "https://kuma.example/api/push/AbCdEf123");
        assert!(!redacted.contains("AbCdEf123"), "{redacted}");
    }

    #[test]
    fn a_summary_is_percent_encoded_for_a_query() {
        assert_eq!(
            percent_encode("ok: 1.2 MiB & more"),
            "ok%3A%201.2%20MiB%20%26%20more"
        );
    }
}
