//! The `events/` fixtures: each parses with its `aws_lambda_events` type.

use super::*;

pub(crate) fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

pub(crate) fn fixture(name: &str, subs: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(events_dir().join(name)).unwrap();
    for (k, v) in subs {
        text = text.replace(k, v);
    }
    text
}

#[test]
fn every_event_fixture_parses_with_its_type() {
    let mut seen = 0;
    for entry in std::fs::read_dir(events_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let ok = if name.starts_with("apigw-v2-") {
            serde_json::from_str::<ApiGatewayV2httpRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    lambda_http::request::from_str(&text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
        } else if name.starts_with("apigw-v1-") {
            serde_json::from_str::<ApiGatewayProxyRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    lambda_http::request::from_str(&text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
        } else if name.starts_with("sqs-") {
            serde_json::from_str::<SqsEvent>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if let Some(rest) = name.strip_prefix("github-") {
            // Real GitHub webhook payloads, named by their X-GitHub-Event.
            let kind = ["pull_request", "push", "ping"]
                .into_iter()
                .find(|k| rest.starts_with(k))
                .unwrap_or("unknown");
            match kind {
                "ping" => serde_json::from_str::<Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| v["zen"].as_str().map(|_| ()).ok_or("no zen".into())),
                _ => tarmac::github::triggers::Event::parse(kind, text.as_bytes())
                    .map_err(|e| e.to_string())
                    .and_then(|e| e.map(|_| ()).ok_or(format!("{kind} was ignored"))),
            }
        } else if name.starts_with("invoke-oidc-") {
            // The worker's direct invocation of the oidc function.
            let text = text.replace("__DEPLOYMENT_ID__", &uuid::Uuid::new_v4().to_string());
            serde_json::from_str::<tarmac::oidc::ExchangeRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if name.starts_with("eventbridge-") {
            serde_json::from_str::<EventBridgeEvent>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Err(format!("{name}: fixtures are named <trigger>-<case>.json"))
        };
        ok.unwrap_or_else(|e| panic!("{name}: {e}"));
        seen += 1;
    }
    assert!(seen >= 17, "fixtures missing: saw {seen}");
}
