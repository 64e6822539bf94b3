//! Engine events in the Pulumi service's shape, for `GET S/update/{id}/events`: what Pulumi
//! clients render while they follow a deployment (the CLI's `pulumi deployment run` and
//! `--remote`, Automation API's remote workspaces), and what they read its result from.
//!
//! Pulumi writes these events itself (`--event-log`); they pass through, renumbered. Terraform
//! and OpenTofu write `-json` lines, which are mapped here: every human message becomes a
//! diagnostic (so a client printing events prints the engine's output), resource hooks become
//! resource events, and the change summary feeds the closing `summaryEvent`. Each update's
//! events start with a `preludeEvent` and end with exactly one `summaryEvent` and a
//! `cancelEvent` (the end-of-stream marker the engine itself writes).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

/// The events of one update, numbered as they are made.
#[derive(Debug)]
pub(crate) struct EventStream {
    seq: i64,
    started: Instant,
    is_preview: bool,
    stack: String,
    project: String,
    /// Pulumi's `resourceChanges`, by operation.
    changes: BTreeMap<String, i64>,
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl EventStream {
    pub(crate) fn new(project: &str, stack: &str, is_preview: bool) -> Self {
        Self {
            seq: 0,
            started: Instant::now(),
            is_preview,
            stack: stack.to_string(),
            project: project.to_string(),
            changes: BTreeMap::new(),
        }
    }

    /// Wraps one payload (`{"<kind>Event": {...}}`) with its sequence number, its time and its
    /// `type` (the payload's key: the SDK's `EngineEvent` requires it; the CLI reads the key).
    fn event(&mut self, kind: &str, payload: Value) -> Value {
        self.seq += 1;
        let mut e = json!({ "sequence": self.seq, "timestamp": now_secs(), "type": kind });
        e[kind] = payload;
        e
    }

    pub(crate) fn prelude(&mut self) -> Value {
        self.event("preludeEvent", json!({ "config": {} }))
    }

    /// A line of the engine's own output, as Pulumi clients print it.
    pub(crate) fn message(&mut self, text: &str, severity: &str) -> Value {
        let mut message = text.to_string();
        if !message.ends_with('\n') {
            message.push('\n');
        }
        self.event(
            "diagnosticEvent",
            json!({ "message": message, "color": "never", "severity": severity }),
        )
    }

    /// The closing events: one `summaryEvent` with the counted changes, then the end marker.
    /// `result` is `succeeded`, `failed` or `canceled`.
    pub(crate) fn finish(&mut self, result: &str) -> Vec<Value> {
        let summary = json!({
            "maybeCorrupt": false,
            "durationSeconds": self.started.elapsed().as_secs(),
            "resourceChanges": self.changes,
            "PolicyPacks": {},
            "isPreview": self.is_preview,
            "result": result,
        });
        vec![
            self.event("summaryEvent", summary),
            self.event("cancelEvent", json!({})),
        ]
    }

    /// The resource changes counted so far.
    pub(crate) fn changes(&self) -> &BTreeMap<String, i64> {
        &self.changes
    }

    /// A Pulumi engine event from its event log: kept, renumbered; its summary's changes are
    /// counted. `None` for what the engine writes that is not an event.
    pub(crate) fn pulumi(&mut self, mut event: Value) -> Option<Value> {
        let map = event.as_object_mut()?;
        map.remove("sequence");
        map.remove("timestamp");
        map.remove("type");
        let (kind, payload) = map.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
        if kind == "summaryEvent"
            && let Some(changes) = payload["resourceChanges"].as_object()
        {
            for (op, n) in changes {
                self.changes
                    .insert(op.clone(), n.as_i64().unwrap_or_default());
            }
        }
        Some(self.event(&kind, payload))
    }

    /// One line of `terraform -json` (or `tofu -json`): the log text it stands for (its human
    /// message, with a diagnostic's detail) and the events it makes. A line that is not JSON is
    /// logged as it is and made a message.
    pub(crate) fn terraform(&mut self, line: &str) -> (Option<String>, Vec<Value>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            let text = line.trim_end();
            if text.is_empty() {
                return (None, vec![]);
            }
            return (Some(text.to_string()), vec![self.message(text, "info")]);
        };
        let kind = v["type"].as_str().unwrap_or_default();
        let mut text = v["@message"].as_str().unwrap_or_default().to_string();
        let mut severity = match v["@level"].as_str() {
            Some("error") => "error",
            Some("warn") => "warning",
            _ => "info",
        };
        if kind == "diagnostic" {
            let d = &v["diagnostic"];
            severity = match d["severity"].as_str() {
                Some("error") => "error",
                _ => "warning",
            };
            if let Some(detail) = d["detail"].as_str().filter(|d| !d.is_empty()) {
                text = format!("{text}\n\n{detail}");
            }
        }
        let mut events = vec![];
        if !text.is_empty() {
            events.push(self.message(&text, severity));
        }
        let resource = |v: &Value, key: &str| v[key]["resource"].clone();
        match kind {
            "planned_change" if self.is_preview => {
                let op = terraform_op(v["change"]["action"].as_str());
                let metadata = self.metadata(&resource(&v, "change"), op);
                events.push(self.event(
                    "resourcePreEvent",
                    json!({ "metadata": metadata, "planning": true }),
                ));
            }
            "apply_start" => {
                let op = terraform_op(v["hook"]["action"].as_str());
                let metadata = self.metadata(&resource(&v, "hook"), op);
                events.push(self.event("resourcePreEvent", json!({ "metadata": metadata })));
            }
            "apply_complete" => {
                let op = terraform_op(v["hook"]["action"].as_str());
                let metadata = self.metadata(&resource(&v, "hook"), op);
                events.push(self.event("resOutputsEvent", json!({ "metadata": metadata })));
            }
            "apply_errored" => {
                let op = terraform_op(v["hook"]["action"].as_str());
                let metadata = self.metadata(&resource(&v, "hook"), op);
                events.push(self.event(
                    "resOpFailedEvent",
                    json!({ "metadata": metadata, "status": 1, "steps": 0 }),
                ));
            }
            "change_summary" => {
                let c = &v["changes"];
                for (ours, theirs) in [
                    ("add", "create"),
                    ("change", "update"),
                    ("remove", "delete"),
                    ("import", "import"),
                ] {
                    let n = c[ours].as_i64().unwrap_or_default();
                    if n > 0 {
                        self.changes.insert(theirs.to_string(), n);
                    } else {
                        self.changes.remove(theirs);
                    }
                }
                // Terraform's human output says so when a plan changes nothing.
                let nothing = ["add", "change", "remove", "import"]
                    .iter()
                    .all(|k| c[k].as_i64().unwrap_or_default() == 0);
                if nothing && c["operation"] == "plan" {
                    let note = "No changes. Your infrastructure matches the configuration.";
                    events.push(self.message(note, "info"));
                    text = format!("{text}\n{note}");
                }
            }
            _ => {}
        }
        ((!text.is_empty()).then_some(text), events)
    }

    /// Pulumi's step metadata for a Terraform resource address.
    fn metadata(&self, resource: &Value, op: &str) -> Value {
        let addr = resource["addr"].as_str().unwrap_or_default();
        let rtype = format!(
            "terraform:index:{}",
            resource["resource_type"].as_str().unwrap_or("resource")
        );
        let urn = format!(
            "urn:pulumi:{}::{}::{rtype}::{addr}",
            self.stack, self.project
        );
        let state = json!({
            "type": rtype, "urn": urn, "id": "", "parent": "", "provider": "",
            "inputs": {}, "outputs": {},
        });
        json!({
            "op": op,
            "urn": urn,
            "type": rtype,
            "old": null,
            "new": state,
            "provider": "",
        })
    }
}

/// Pulumi's step op for a Terraform action.
fn terraform_op(action: Option<&str>) -> &'static str {
    match action {
        Some("create") => "create",
        Some("update") => "update",
        Some("delete") => "delete",
        Some("replace" | "create_then_delete" | "delete_then_create") => "replace",
        Some("read") => "read",
        Some("import") => "import",
        _ => "same",
    }
}

/// Follows Pulumi's event log while its command runs (and once more after `done`), turning each
/// complete line into an event of the update.
pub(crate) async fn tail_event_log(
    path: std::path::PathBuf,
    log: super::logs::RunLog,
    step: usize,
    events: super::Events,
    done: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut offset = 0u64;
    let mut partial = Vec::new();
    loop {
        let finished = done.is_cancelled();
        if let Ok(mut file) = super::files::open_regular(&path).map(tokio::fs::File::from_std)
            && file.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
        {
            let mut fresh = Vec::new();
            if let Ok(n) = file.read_to_end(&mut fresh).await {
                offset += n as u64;
                partial.extend_from_slice(&fresh);
            }
        }
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let made = serde_json::from_slice::<Value>(&line)
                .ok()
                .and_then(|v| super::lock(&events).pulumi(v));
            if let Some(e) = made {
                log.event(step, e).await;
            }
        }
        if finished {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = done.cancelled() => {}
        }
    }
}

/// Masks every string in an event (messages may quote the run's secrets).
pub(crate) fn mask_strings(v: &mut Value, mask: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = mask(s),
        Value::Array(items) => items.iter_mut().for_each(|i| mask_strings(i, mask)),
        Value::Object(map) => map.values_mut().for_each(|i| mask_strings(i, mask)),
        _ => {}
    }
}

/// The payload key of an event (`summaryEvent`, ...).
#[cfg(test)]
pub(crate) fn kind(event: &Value) -> Option<&str> {
    event["type"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLY: &str = r#"{"@level":"info","@message":"Terraform 1.15.5","type":"version"}
{"@level":"info","@message":"terraform_data.x: Plan to create","change":{"resource":{"addr":"terraform_data.x","resource_type":"terraform_data"},"action":"create"},"type":"planned_change"}
{"@level":"info","@message":"terraform_data.x: Creating...","hook":{"resource":{"addr":"terraform_data.x","resource_type":"terraform_data"},"action":"create"},"type":"apply_start"}
{"@level":"info","@message":"terraform_data.x: Creation complete after 0s [id=e]","hook":{"resource":{"addr":"terraform_data.x","resource_type":"terraform_data"},"action":"create"},"type":"apply_complete"}
{"@level":"info","@message":"Apply complete! Resources: 1 added, 0 changed, 0 destroyed.","changes":{"add":1,"change":0,"import":0,"remove":0,"operation":"apply"},"type":"change_summary"}"#;

    #[test]
    fn terraform_json_becomes_messages_resource_events_and_one_summary() {
        let mut s = EventStream::new("web", "dev", false);
        let mut events = vec![s.prelude()];
        let mut log = vec![];
        for line in APPLY.lines() {
            let (text, more) = s.terraform(line);
            log.extend(text);
            events.extend(more);
        }
        events.extend(s.finish("succeeded"));
        assert_eq!(
            log[4],
            "Apply complete! Resources: 1 added, 0 changed, 0 destroyed."
        );
        let kinds: Vec<&str> = events.iter().filter_map(kind).collect();
        assert_eq!(kinds.first(), Some(&"preludeEvent"));
        assert_eq!(kinds.iter().filter(|k| **k == "summaryEvent").count(), 1);
        assert!(kinds.contains(&"resourcePreEvent") && kinds.contains(&"resOutputsEvent"));
        assert_eq!(kinds.last(), Some(&"cancelEvent"));
        // Every event has exactly one payload, named by its type, and the sequence increases.
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.as_object().unwrap().len(), 4, "{e}");
            assert!(e.get(e["type"].as_str().unwrap()).is_some(), "{e}");
            assert_eq!(e["sequence"], i as i64 + 1);
        }
        let summary = &events[events.len() - 2]["summaryEvent"];
        assert_eq!(summary["resourceChanges"], json!({"create": 1}));
        assert_eq!(summary["result"], "succeeded");
        assert_eq!(summary["isPreview"], false);
        let pre = events
            .iter()
            .find(|e| kind(e) == Some("resourcePreEvent"))
            .unwrap();
        assert_eq!(
            pre["resourcePreEvent"]["metadata"]["urn"],
            "urn:pulumi:dev::web::terraform:index:terraform_data::terraform_data.x"
        );
    }

    #[test]
    fn a_plan_without_changes_says_so_and_diagnostics_keep_their_detail() {
        let mut s = EventStream::new("web", "dev", true);
        let (text, _) = s.terraform(r#"{"@level":"info","@message":"Plan: 0 to add, 0 to change, 0 to destroy.","changes":{"add":0,"change":0,"import":0,"remove":0,"operation":"plan"},"type":"change_summary"}"#);
        assert!(text.unwrap().contains("No changes."));
        let (text, events) = s.terraform(r#"{"@level":"error","@message":"Error: Invalid reference","diagnostic":{"severity":"error","summary":"Invalid reference","detail":"A reference to a resource type must be followed by at least one attribute."},"type":"diagnostic"}"#);
        assert!(text.unwrap().contains("must be followed"));
        assert_eq!(events[0]["diagnosticEvent"]["severity"], "error");
        let (text, events) = s.terraform("not json at all");
        assert_eq!(text.as_deref(), Some("not json at all"));
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn pulumi_events_pass_through_renumbered_and_masking_reaches_every_string() {
        let mut s = EventStream::new("web", "dev", false);
        s.prelude();
        let e = s
            .pulumi(json!({"sequence": 90, "timestamp": 1, "summaryEvent": {"resourceChanges": {"same": 2}, "result": "succeeded"}}))
            .unwrap();
        assert_eq!(e["sequence"], 2);
        assert_eq!(s.changes()["same"], 2);
        let mut v = json!({"diagnosticEvent": {"message": "pw=hunter2"}, "x": ["hunter2"]});
        mask_strings(&mut v, &|t: &str| t.replace("hunter2", "[secret]"));
        assert!(!v.to_string().contains("hunter2"));
    }
}
