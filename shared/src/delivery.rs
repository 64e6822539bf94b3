//! Delivering the outbox: signed HTTP POSTs to hooks, GitHub API calls, and the deployments
//! `pulumi_deployments` hooks start; each attempt recorded, failures retried with exponential
//! backoff. Above `service` (it starts deployments), which is above `webhooks` (which makes the
//! messages).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crypto::hmac_sha256_hex;
use crate::deps::Deps;
use crate::domain::StackRef;
use crate::error::{Error, Result};
use crate::github::Integration;
use crate::github::client::GitHub;
use crate::ports::{Attempt, OutboxMessage};
use crate::webhooks::events::{PULUMI_DEPLOYMENTS_KIND, hook_target};
use crate::webhooks::{Format, Hook, HookScope};

/// Attempts per message before it is given up (about four minutes of retries at the default
/// base).
pub(crate) const MAX_ATTEMPTS: u32 = 8;
/// The first retry's delay; each next one doubles, up to `MAX_DELAY`.
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(300);
/// A receiver gets this long to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed message is someone's for this long: longer than the slowest send (a GitHub comment
/// is a token, a read and a write, each with its own timeout).
const CLAIM: Duration = Duration::from_secs(120);
/// Response bodies are kept up to this size in the delivery log.
const KEEP_BODY: usize = 4096;

/// When to try again after `attempts` failed attempts; `None` once they are spent.
pub(crate) fn next_attempt(
    attempts: u32,
    now: OffsetDateTime,
    base: Duration,
) -> Option<OffsetDateTime> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let delay = base
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(MAX_DELAY);
    Some(now + delay)
}

/// A hook request's signature headers, sent at unix time `t`: Pulumi's (the hex HMAC-SHA256 of
/// the body) and Tarmac's (`t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, which lets a receiver
/// refuse a replay of an old request).
pub(crate) fn signatures(secret: &str, body: &str, t: i64) -> [(&'static str, String); 2] {
    [
        (
            "Pulumi-Webhook-Signature",
            hmac_sha256_hex(secret, body.as_bytes()),
        ),
        (
            "Tarmac-Webhook-Signature",
            format!(
                "t={t},v1={}",
                hmac_sha256_hex(secret, format!("{t}.{body}").as_bytes())
            ),
        ),
    ]
}

/// `hook:<scope key>/<name>` back into its scope and name.
pub(crate) fn parse_hook_target(target: &str) -> Option<(HookScope, String)> {
    let (scope, name) = target.strip_prefix("hook:")?.rsplit_once('/')?;
    Some((HookScope::from_key(scope)?, name.to_string()))
}

/// Addresses a hook may never reach: link-local (cloud metadata services live there),
/// unspecified and multicast. Private and loopback addresses are allowed: self-hosted receivers
/// are often internal.
fn forbidden(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        std::net::IpAddr::V6(v6) => {
            let seg = v6.segments();
            (seg[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                // AWS's IPv6 metadata endpoint.
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// A client for one hook URL: the host resolved once and checked, the connection pinned to
/// that address (so a second lookup cannot swap it), no redirects followed.
async fn client_for(url: &str) -> std::result::Result<reqwest::Client, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad payload URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("the payload URL has no host")?
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let lookup = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((lookup.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, which webhooks may not reach",
            bad.ip()
        ));
    }
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(crate::USER_AGENT)
        .resolve(&lookup, addr)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// At most `KEEP_BODY` bytes of a response body: the rest is not read.
async fn capped_body(mut resp: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < KEEP_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                kept.extend_from_slice(&chunk[..chunk.len().min(KEEP_BODY - kept.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Sends one message once and returns the attempt, whatever happened. `Ok(None)` when the
/// message has nowhere to go any more (its hook was deleted or deactivated).
pub(crate) async fn send(deps: &Deps, m: &OutboxMessage) -> Result<Option<Attempt>> {
    if m.target == "github" {
        return Ok(Some(send_github(deps, m).await));
    }
    let (scope, name) = parse_hook_target(&m.target)
        .ok_or_else(|| Error::internal(format!("bad outbox target {}", m.target)))?;
    let Some(hook) = deps.hooks.get_hook(&scope, &name).await? else {
        return Ok(None);
    };
    if !hook.active && m.kind != "ping" {
        return Ok(None);
    }
    if hook.format == Format::PulumiDeployments {
        return Ok(Some(start_dependent(deps, &scope, &hook, m).await));
    }
    let secret = match &hook.secret {
        Some(s) => Some(deps.cipher.for_org(&scope.org).open(s).ok_or_else(|| {
            Error::internal("a webhook secret cannot be opened with this server's key")
        })?),
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    let mut headers: Vec<(String, String)> = vec![
        ("Content-Type".into(), "application/json".into()),
        ("Pulumi-Webhook-ID".into(), m.id.clone()),
        ("Pulumi-Webhook-Kind".into(), m.kind.clone()),
        ("Tarmac-Webhook-Event".into(), m.event.clone()),
    ];
    if let Some(secret) = &secret {
        headers.extend(
            signatures(secret, &m.body, now.unix_timestamp()).map(|(k, v)| (k.to_string(), v)),
        );
    }
    let started = Instant::now();
    let result = match client_for(&hook.payload_url).await {
        Ok(client) => {
            let mut req = client.post(&hook.payload_url).body(m.body.clone());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.send().await.map_err(|e| e.to_string())
        }
        Err(refused) => Err(refused),
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    let request_headers: String = headers
        .iter()
        .filter(|(k, _)| !k.ends_with("Signature"))
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let attempt = match result {
        Ok(resp) => {
            let code = resp.status().as_u16() as i64;
            let response_headers: String = resp
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap_or("")))
                .collect();
            let body = capped_body(resp).await;
            Attempt {
                timestamp: now,
                duration_ms,
                request_url: hook.payload_url.clone(),
                request_headers,
                response_code: code,
                response_headers,
                response_body: body,
            }
        }
        Err(e) => Attempt {
            timestamp: now,
            duration_ms,
            request_url: hook.payload_url.clone(),
            request_headers,
            response_code: 0,
            response_headers: String::new(),
            response_body: format!("no response: {e}"),
        },
    };
    Ok(Some(attempt))
}

/// The longest chain of stacks `pulumi_deployments` hooks may start one after another.
pub(crate) const MAX_CHAIN: usize = 10;

/// A `pulumi_deployments` hook's "delivery": an inherited `update` of its target stack, after
/// its source stack's update succeeded. Refused (409) when the target is already in the chain
/// that led here, so that A→B→A stops at A's second turn, or when the chain is `MAX_CHAIN` long.
/// Idempotent: the deployment's id is derived from the source deployment and the hook, so a
/// redelivery finds it made. The attempt says what happened; no HTTP call is made.
async fn start_dependent(
    deps: &Deps,
    scope: &HookScope,
    hook: &Hook,
    m: &OutboxMessage,
) -> Attempt {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let result = async {
        let target = crate::domain::hooks::deployment_target(&scope.org, &hook.payload_url)?;
        let payload: Value = serde_json::from_str(&m.body)?;
        let source = StackRef::new(
            &scope.org,
            payload["projectName"].as_str().unwrap_or_default(),
            payload["stackName"].as_str().unwrap_or_default(),
        )?;
        let source_id = payload["deploymentId"]
            .as_str()
            .and_then(|i| uuid::Uuid::parse_str(i).ok())
            .ok_or_else(|| Error::invalid("the event names no deployment"))?;
        let source_deployment = deps.deployments.get_deployment(&source, source_id).await?;
        let upstream = source_deployment
            .as_ref()
            .and_then(|d| d.config.spec().upstream.clone());
        let mut chain = upstream.map(|u| u.stacks).unwrap_or_default();
        chain.push(source.to_string());
        if chain.contains(&target.to_string()) {
            return Err(Error::conflict(format!(
                "refused: {target} already ran in this chain ({}); dependent deployments never loop",
                chain.join(" -> ")
            )));
        }
        if chain.len() >= MAX_CHAIN {
            return Err(Error::conflict(format!(
                "refused: the chain {} is {MAX_CHAIN} stacks long already",
                chain.join(" -> ")
            )));
        }
        let key = format!("{}:{}", source_id, hook_target(scope, &hook.name));
        let id = crate::crypto::derived_uuid(&[b"tarmac-dependent:", key.as_bytes()]);
        let body = serde_json::json!({"operation": "update", "inheritSettings": true});
        // Requested by whoever asked for the deployment that set it off, so that they cannot
        // approve it where the target stack gates updates.
        let requested_by = source_deployment
            .map(|d| d.requested_by)
            .unwrap_or_else(|| format!("webhook:{}", hook.name));
        let request = crate::service::CreateRequest {
            id: Some(id),
            upstream: Some(crate::domain::spec::Upstream {
                deployment: source_id,
                stacks: chain,
            }),
            ..crate::service::CreateRequest::new(&target, &body, "webhook", &requested_by)
        };
        match crate::service::create(deps, &request).await {
            Ok(d) => Ok((202, serde_json::json!({"id": d.id, "version": d.version, "stack": target.to_string()}))),
            Err(Error::Conflict(_)) if deps.deployments.get_deployment(&target, id).await?.is_some() => {
                Ok((200, serde_json::json!({"id": id, "stack": target.to_string(), "note": "started already"})))
            }
            Err(e) => Err(e),
        }
    }
    .await;
    let (code, body) = match result {
        Ok((code, body)) => (code, body.to_string()),
        Err(e) if !e.is_internal() => (e.status().as_u16() as i64, e.to_string()),
        Err(e) => {
            tracing::error!(error = %e.chain(), "could not start a dependent deployment");
            (500, "internal error".to_string())
        }
    };
    Attempt {
        timestamp: now,
        duration_ms: started.elapsed().as_millis() as i64,
        request_url: format!("deployments:{}", hook.payload_url),
        request_headers: String::new(),
        response_code: code,
        response_headers: String::new(),
        response_body: body,
    }
}

async fn send_github(deps: &Deps, m: &OutboxMessage) -> Attempt {
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let body: Value = serde_json::from_str(&m.body).unwrap_or(Value::Null);
    let result = github_call(deps, &m.org, &m.kind, &body).await;
    let (code, response_body) = match &result {
        Ok(url) => (200, url.clone()),
        Err(e) => (0, e.to_string()),
    };
    Attempt {
        timestamp: now,
        duration_ms: started.elapsed().as_millis() as i64,
        request_url: result.unwrap_or_default(),
        request_headers: String::new(),
        response_code: code,
        response_headers: String::new(),
        response_body,
    }
}

/// Makes the GitHub call a message describes; returns the API path it called.
async fn github_call(deps: &Deps, org: &str, kind: &str, body: &Value) -> Result<String> {
    let stored = deps
        .orgs
        .get_integration(org, "github")
        .await?
        .ok_or_else(|| Error::invalid("the org's GitHub integration was removed"))?;
    let integration: Integration = serde_json::from_value(stored)?;
    let cipher = deps.cipher.for_org(org);
    let gh = GitHub::new(&integration, |s| cipher.open(s))?;
    let token = gh
        .token(body["installation"].as_i64())
        .await?
        .ok_or_else(|| Error::invalid("the GitHub integration has no token or App"))?;
    let repo = body["repository"].as_str().unwrap_or_default();
    match kind {
        "github_status" => {
            let commit = body["commit"].as_str().unwrap_or_default();
            let mut status = body["status"].clone();
            if let Some(current) = current_state(deps, body).await {
                let (state, description) = current;
                status["state"] = json!(state);
                status["description"] = json!(description);
            }
            gh.set_status(&token, repo, commit, &status).await?;
            Ok(format!("/repos/{repo}/statuses/{commit}"))
        }
        "github_comment" => {
            let pr = body["pullRequest"].as_i64().unwrap_or_default();
            gh.upsert_comment(
                &token,
                repo,
                pr,
                body["marker"].as_str().unwrap_or_default(),
                body["body"].as_str().unwrap_or_default(),
            )
            .await?;
            Ok(format!("/repos/{repo}/issues/{pr}/comments"))
        }
        other => Err(Error::internal(format!("unknown GitHub message {other}"))),
    }
}

/// The commit status for the deployment's state now, if it can be read.
async fn current_state(deps: &Deps, body: &Value) -> Option<(&'static str, String)> {
    let stack = StackRef::parse(body["stack"].as_str()?).ok()?;
    let id = body["deploymentId"].as_str()?.parse().ok()?;
    let d = deps.deployments.get_deployment(&stack, id).await.ok()??;
    Some(crate::webhooks::events::github_state(d.status, d.operation))
}

fn delivered(a: &Attempt) -> bool {
    (200..300).contains(&a.response_code)
}

/// Sends one claimed message and records the attempt, scheduling the next if it failed.
pub(crate) async fn deliver(deps: &Deps, m: &OutboxMessage, attempts_before: u32, base: Duration) {
    let outbox = &deps.outbox;
    let attempt = match send(deps, m).await {
        Ok(Some(a)) => a,
        // Nowhere to go: done, without an attempt.
        Ok(None) => {
            let _ = outbox.finish(&m.id).await;
            return;
        }
        Err(e) => {
            tracing::error!(id = %m.id, error = %e.chain(), "could not send a notification");
            let next = next_attempt(attempts_before + 1, OffsetDateTime::now_utc(), base);
            let _ = outbox.reschedule(&m.id, next).await;
            return;
        }
    };
    // A dependent stack's deployment refused for a reason of its own (a loop, no settings) is
    // refused again on every retry.
    let final_refusal =
        m.kind == PULUMI_DEPLOYMENTS_KIND && (400..500).contains(&attempt.response_code);
    let next = if delivered(&attempt) || final_refusal {
        None
    } else {
        next_attempt(attempts_before + 1, OffsetDateTime::now_utc(), base)
    };
    if next.is_none() && !delivered(&attempt) {
        tracing::warn!(id = %m.id, target = %m.target, "notification given up after {MAX_ATTEMPTS} attempts");
    }
    if let Err(e) = outbox.record_attempt(&m.id, &attempt, next).await {
        tracing::error!(id = %m.id, error = %e.chain(), "could not record a delivery attempt");
    }
}

/// Sends a message now, outside the schedule (a ping, a redelivery), records the attempt and
/// returns it. A failed send is retried on the usual schedule.
pub(crate) async fn deliver_now(
    deps: &Deps,
    m: &OutboxMessage,
    attempts_before: u32,
) -> Result<Attempt> {
    let outbox = &deps.outbox;
    let attempt = send(deps, m)
        .await?
        .ok_or_else(|| Error::not_found("the webhook no longer exists"))?;
    let next = if delivered(&attempt) || m.kind == "ping" {
        None
    } else {
        next_attempt(attempts_before + 1, OffsetDateTime::now_utc(), RETRY_BASE)
    };
    outbox.record_attempt(&m.id, &attempt, next).await?;
    Ok(attempt)
}

/// Sends what is due until nothing is or `budget` is spent: how the Lambda functions dispatch
/// (the worker after its runs, the scheduler on every tick), since nothing runs between
/// invocations. Returns how many messages were claimed.
#[cfg(feature = "aws")]
pub(crate) async fn drain(deps: &Arc<Deps>, budget: Duration) -> usize {
    let outbox = &deps.outbox;
    let started = Instant::now();
    let mut claimed_total = 0;
    // Less than one send's time left: leave the messages to the next invocation.
    while started.elapsed() + SEND_TIMEOUT <= budget {
        let claimed = match outbox.claim_due(OffsetDateTime::now_utc(), 16, CLAIM).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "outbox claim failed");
                break;
            }
        };
        if claimed.is_empty() {
            break;
        }
        claimed_total += claimed.len();
        let mut sends = tokio::task::JoinSet::new();
        for (m, attempts) in claimed {
            let deps = Arc::clone(deps);
            sends.spawn(async move { deliver(&deps, &m, attempts, RETRY_BASE).await });
        }
        let left = budget.saturating_sub(started.elapsed());
        // Unfinished sends keep their claim and are sent again after it.
        let _ =
            tokio::time::timeout(left, async { while sends.join_next().await.is_some() {} }).await;
    }
    claimed_total
}

/// The embedded dispatcher: sends due messages until `stop`, woken early by `wake`.
pub(crate) fn spawn(
    deps: Arc<Deps>,
    wake: Arc<Notify>,
    base: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let outbox = Arc::clone(&deps.outbox);
        let mut running = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let claimed = if running.len() < 16 {
                outbox
                    .claim_due(OffsetDateTime::now_utc(), 16 - running.len(), CLAIM)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e.chain(), "outbox claim failed");
                        vec![]
                    })
            } else {
                vec![]
            };
            let idle = claimed.is_empty();
            for (m, attempts) in claimed {
                let deps = Arc::clone(&deps);
                running.spawn(async move { deliver(&deps, &m, attempts, base).await });
            }
            if idle {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
        // In-flight sends get their timeout to finish; their messages stay claimed otherwise
        // and are sent again after the lease.
        let _ = tokio::time::timeout(SEND_TIMEOUT, async {
            while running.join_next().await.is_some() {}
        })
        .await;
    })
}

/// A delivery as Pulumi shows it, plus Tarmac's `event` and `attempt`.
pub(crate) fn render_delivery(m: &OutboxMessage, a: &Attempt, n: usize) -> Value {
    json!({
        "id": m.id,
        "kind": m.kind,
        "event": m.event,
        "attempt": n,
        "payload": m.body,
        "timestamp": a.timestamp.unix_timestamp(),
        "duration": a.duration_ms,
        "requestUrl": a.request_url,
        "requestHeaders": a.request_headers,
        "responseCode": a.response_code,
        "responseHeaders": a.response_headers,
        "responseBody": a.response_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hooks::Event;

    #[test]
    fn retries_back_off_exponentially_and_stop() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let delay = |n| next_attempt(n, now, RETRY_BASE).map(|t| (t - now).whole_seconds());
        assert_eq!(delay(1), Some(1));
        assert_eq!(delay(2), Some(2));
        assert_eq!(delay(3), Some(4));
        assert_eq!(delay(7), Some(64));
        assert_eq!(delay(MAX_ATTEMPTS), None);
    }

    #[test]
    fn sequences_follow_versions_then_each_runs_lifecycle() {
        use crate::webhooks::events::sequence;
        let order = [
            sequence(1, Event::DeploymentQueued),
            sequence(1, Event::DeploymentStarted),
            sequence(1, Event::DeploymentFailed),
            sequence(2, Event::DeploymentQueued),
            sequence(2, Event::DeploymentStarted),
            sequence(2, Event::DriftDetected),
            sequence(2, Event::DriftDetectionSucceeded),
            sequence(3, Event::DeploymentQueued),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn hook_targets_round_trip() {
        let s = HookScope {
            org: "acme".into(),
            stack: Some(StackRef::new("acme", "web", "dev").unwrap()),
        };
        let t = crate::webhooks::events::hook_target(&s, "ab12cd34");
        assert_eq!(parse_hook_target(&t), Some((s, "ab12cd34".into())));
        let o = HookScope {
            org: "acme".into(),
            stack: None,
        };
        assert_eq!(
            parse_hook_target(&crate::webhooks::events::hook_target(&o, "x")),
            Some((o, "x".into()))
        );
    }
}
