//! The OpenAPI document at `/api/openapi.json`: that it describes exactly the routes served, and
//! the tenant-isolation matrix, generated from it, so a route is covered the day it is added.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

/// How an operation is authenticated, as the document says.
#[derive(Debug, Clone, PartialEq)]
enum Security {
    Public,
    /// An org token with at least this role.
    Token(String),
    /// An agent pool's token.
    Pool,
}

#[derive(Debug, Clone)]
struct Op {
    method: Method,
    path: String,
    security: Security,
}

const METHODS: [&str; 6] = ["get", "head", "post", "put", "patch", "delete"];

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let security = match op["security"].as_array().and_then(|s| s.first()) {
                None => Security::Public,
                Some(req) if req.get("poolToken").is_some() => Security::Pool,
                Some(req) => Security::Token(
                    req["token"][0]
                        .as_str()
                        .unwrap_or_else(|| panic!("{m} {path}: token without a role"))
                        .to_string(),
                ),
            };
            ops.push(Op {
                method: m.to_uppercase().parse().unwrap(),
                path: path.clone(),
                security,
            });
        }
    }
    ops
}

/// The path with its parameters filled in.
fn concrete(template: &str, values: &HashMap<&str, String>) -> String {
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => values
                    .get(name)
                    .unwrap_or_else(|| panic!("no value for path parameter {name} in {template}"))
                    .clone(),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(
    app: &TestApp,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut req = app
        .client
        .request(method.clone(), format!("{}{path}", app.url));
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    if !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        req = req.header("Content-Type", "application/json").body("{}");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn document(app: &TestApp) -> Value {
    let (status, doc) = app
        .request(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, 200, "{doc}");
    doc
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_describes_exactly_the_routes_served() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    assert!(ops.len() >= 90, "only {} operations", ops.len());

    // Every operation: a unique id, a success, the error shape on every error, 401 if secured.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_string()), "{m} {path}: duplicate id {id}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{m} {path}: no success response"
            );
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{m} {path} {status}"
                    );
                }
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{m} {path}: no 401");
            }
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_path, "{m} {path}: path parameters");
        }
    }

    // Tarmac's extensions are marked, Pulumi's own routes are not.
    let marked = |path: &str, m: &str| doc["paths"][path][m]["x-tarmac-extension"] == true;
    assert!(marked("/api/orgs/{org}/deployments/bulk", "post"));
    assert!(marked(
        "/api/stacks/{org}/{project}/{stack}/deployments/{id}/approve",
        "post"
    ));
    assert!(!marked(
        "/api/stacks/{org}/{project}/{stack}/deployments",
        "post"
    ));
    assert!(!marked(
        "/api/stacks/{org}/{project}/{stack}/deployments/settings",
        "get"
    ));

    // Every link leads to an operation of the document.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().unwrap() {
                for (name, link) in r["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().unwrap();
                    assert!(
                        ids.contains(target),
                        "{m} {path} {status} link {name}: {target}"
                    );
                }
            }
        }
    }

    // Both ways: each documented method of each documented path is routed (never the router's
    // 404 or 405), and each other method of that path is 405.
    let values: HashMap<&str, String> = [
        ("org", "default"),
        ("project", "proj"),
        ("stack", "probe"),
        ("id", "6f9619ff-8b86-4d11-b42d-00c04fc964ff"),
        ("version", "1"),
        ("name", "h"),
        ("poolId", "p"),
        ("step", "0"),
        ("event", "6f9619ff-8b86-4d11-b42d-00c04fc964ff"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    let documented: BTreeMap<&str, BTreeSet<&str>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, item)| {
            (
                p.as_str(),
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect(),
            )
        })
        .collect();
    let mut probes = 0;
    for (path, methods) in &documented {
        let url = concrete(path, &values);
        for m in ["get", "post", "put", "patch", "delete"] {
            let method: Method = m.to_uppercase().parse().unwrap();
            let (status, body) = send(&app, &method, &url, None).await;
            probes += 1;
            let unrouted = status == 405 || (status == 404 && body.contains("no route for"));
            if methods.contains(m) {
                assert!(!unrouted, "{m} {path} is documented but not served: {body}");
            } else {
                assert_eq!(
                    status, 405,
                    "{m} {path} is served but not documented: {body}"
                );
            }
        }
    }
    // The probe can fail: a path nobody serves is the router's 404.
    let (status, body) = send(&app, &Method::GET, "/api/orgs/default/nothing", None).await;
    assert!(status == 404 && body.contains("no route for"), "{body}");
    eprintln!(
        "{} paths, {} operations, {probes} probes",
        documented.len(),
        ops.len()
    );
}

#[tokio::test]
async fn every_route_refuses_no_token_a_bad_token_another_org_and_a_low_role() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("isolated");
    let (org, project, name) = {
        let mut parts = s.split('/');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    // The org's data, with markers that no other org's caller may see a byte of.
    const MARKERS: [&str; 3] = ["env-marker-5c1e", "tag-marker-8d2f", "pool-marker-3a9b"];
    let mut settings = repo.settings();
    settings["operationContext"] =
        json!({"environmentVariables": {"MARKER": MARKERS[0]}, "preRunCommands": ["true"]});
    let (status, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/tags"),
            json!({"name": "owner", "value": MARKERS[1]}),
        )
        .await;
    assert!(status.is_success(), "{v}");
    let (status, d) = app
        .post(
            &format!("/api/stacks/{s}/deployments"),
            json!({"operation": "preview"}),
        )
        .await;
    assert_eq!(status, 202, "{d}");
    let (status, pool) = app
        .post(
            "/api/orgs/default/agent-pools",
            json!({"name": MARKERS[2], "description": "isolation"}),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    let (status, hook) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({"displayName": "h", "payloadUrl": "http://127.0.0.1:9/hook", "active": false}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");

    let reader = app.create_token("default", "read");
    let writer = app.create_token("default", "write");
    let stranger = app.create_token("acme", "admin");
    let (status, foreign_pool) = app
        .request(
            Method::POST,
            "/api/orgs/acme/agent-pools",
            Some(&stranger),
            Some(br#"{"name": "theirs"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 200, "{foreign_pool}");
    let foreign_pool_token = foreign_pool["tokenValue"].as_str().unwrap().to_string();

    let values: HashMap<&str, String> = HashMap::from([
        ("org", org),
        ("project", project),
        ("stack", name),
        ("id", d["id"].as_str().unwrap().to_string()),
        ("version", "1".to_string()),
        ("name", hook["name"].as_str().unwrap().to_string()),
        ("poolId", pool["id"].as_str().unwrap().to_string()),
        ("step", "0".to_string()),
        ("event", "6f9619ff-8b86-4d11-b42d-00c04fc964ff".to_string()),
    ]);

    let doc = document(&app).await;
    let ops = operations(&doc);
    let mut failures: Vec<String> = Vec::new();
    let mut cases = 0;
    // A refusal: one of `want`, in the error shape, with none of the org's data.
    let refused = |what: &str, op: &Op, status: u16, body: &str, want: &[u16]| {
        let shaped = op.method == Method::HEAD
            || serde_json::from_str::<Value>(body).is_ok_and(|v| {
                v["code"].as_u64() == Some(u64::from(status)) && v["message"].is_string()
            });
        let leaked = MARKERS.iter().find(|m| body.contains(*m));
        (!want.contains(&status) || !shaped || leaked.is_some()).then(|| {
            format!(
                "{} {} with {what}: {status} (want {want:?}), leaked {leaked:?}: {body:.200}",
                op.method, op.path
            )
        })
    };
    let mut public = BTreeSet::new();
    for op in &ops {
        let url = concrete(&op.path, &values);
        if op.security == Security::Public {
            public.insert(format!("{} {}", op.method, op.path));
            continue;
        }
        for (what, header) in [
            ("no token", None),
            (
                "a malformed token",
                Some("token tmc_not-a-real-token".to_string()),
            ),
            ("another scheme", Some("Basic dXNlcjpwYXNz".to_string())),
        ] {
            let (status, body) = send(&app, &op.method, &url, header.as_deref()).await;
            cases += 1;
            failures.extend(refused(what, op, status, &body, &[401]));
        }
        let foreign = match &op.security {
            Security::Pool => format!("token {foreign_pool_token}"),
            _ => format!("token {stranger}"),
        };
        let (status, body) = send(&app, &op.method, &url, Some(&foreign)).await;
        cases += 1;
        if op.path.contains("{org}") {
            failures.extend(refused(
                "another org's token",
                op,
                status,
                &body,
                &[403, 404],
            ));
        } else {
            // The caller's own (`/api/user`, an agent's claim): answered about its own org, with
            // nothing of this one.
            if status >= 500
                || body.contains(&values["stack"])
                || MARKERS.iter().any(|m| body.contains(*m))
            {
                failures.push(format!(
                    "{} {} with another org's token: {status}: {body:.200}",
                    op.method, op.path
                ));
            }
        }
        let lower = match &op.security {
            Security::Token(role) if role == "write" => Some(&reader),
            Security::Token(role) if role == "admin" => Some(&writer),
            _ => None,
        };
        if let Some(t) = lower {
            let (status, body) = send(&app, &op.method, &url, Some(&format!("token {t}"))).await;
            cases += 1;
            failures.extend(refused("a role too low", op, status, &body, &[403]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // What anyone may call is a short, known list: a route made public by mistake fails here.
    let want: BTreeSet<String> = [
        "GET /api/openapi.json",
        "GET /oidc/.well-known/openid-configuration",
        "GET /oidc/.well-known/jwks.json",
        "GET /api/capabilities",
        "POST /api/bootstrap",
        "POST /api/orgs/{org}/integrations/github/webhook",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(public, want);
    eprintln!("{} operations, {cases} isolation cases", ops.len());
}
