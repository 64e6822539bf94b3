//! The API's OpenAPI 3.1 description, served at `/api/openapi.json`.
//!
//! It is generated, never written: each handler's `#[utoipa::path]` attribute gives its method,
//! path, parameters, bodies, route-specific statuses and least role, and the router registers
//! handlers only through `utoipa_axum::routes!`, so a route cannot exist without its entry.
//! [`finish`] then adds what holds for every route alike, from the same facts the middleware
//! and extractors act on:
//! - the `org`, `project` and `stack` path parameters the nesting supplies;
//! - the errors any route can answer (400, 401, 403, 404, 408, 413, 414, 431, 5XX), each in the
//!   `{code, message}` shape;
//! - on POSTs with an org token, the `Idempotency-Key` header and its 409 and 422;
//! - operation ids `{tag}_{handler}`, made unique where one handler serves two paths (the
//!   legacy preview routes, hooks under an org and under a stack);
//! - `links` from what a creation answers to the operations that read it.
//!
//! Security: `token` is an org API token (`Authorization: token <t>`); its scopes name the
//! least role an operation needs (`read` < `write` < `admin`). `poolToken` is an agent pool's
//! token. Operations with neither are public. Tarmac's extensions, which Pulumi's API lacks,
//! carry `x-tarmac-extension: true`.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Map, Value, json};

/// The `{code, message}` body of every error (reference §5).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// The HTTP status, repeated.
    code: u16,
    /// What went wrong, for a person.
    message: String,
}

/// The document, built once.
pub(super) fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let paths = super::api().into_openapi();
        finish(serde_json::to_value(paths).expect("an OpenAPI document serialises"))
    })
}

/// `GET /api/openapi.json`
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn serve() -> axum::Json<&'static Value> {
    axum::Json(document())
}

/// What a path parameter the nesting supplies means.
fn describe(name: &str) -> &'static str {
    match name {
        "org" => "The organization's name",
        "project" => "The project's name",
        "stack" => "The stack's name",
        "id" => "The resource's id",
        _ => "A path parameter",
    }
}

/// The statuses any route may answer besides its own, with when.
const COMMON_ERRORS: &[(&str, &str)] = &[
    ("400", "Invalid input: a malformed name, parameter or body"),
    ("404", "No such resource, or one of another organization"),
    ("414", "The URL is too long"),
    ("431", "The request's headers are too large"),
    ("5XX", "A failure of the server or a service it depends on"),
];

fn finish(mut doc: Value) -> Value {
    doc["info"] = json!({
        "title": "Tarmac",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Tarmac's REST API: Pulumi Cloud's Deployments API, wire-compatible, and \
            Tarmac's extensions (marked `x-tarmac-extension`). Errors are `{code, message}`.",
        "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
    });
    let components = doc["components"].as_object_mut().map(std::mem::take);
    let mut components = components.unwrap_or_default();
    components.insert(
        "securitySchemes".into(),
        json!({
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "An organization's API token, as `token <value>` (or \
                    `Bearer <value>`). An operation's scopes are the least role it needs: \
                    read < write < admin.",
            },
            "poolToken": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "An agent pool's token, as `token <value>`.",
            },
        }),
    );
    let schemas = components
        .entry("schemas")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("schemas is an object");
    schemas.insert(
        "ErrorBody".into(),
        serde_json::to_value(<ErrorBody as utoipa::PartialSchema>::schema())
            .expect("a schema serialises"),
    );
    doc["components"] = Value::Object(components);

    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    let mut ids: std::collections::HashMap<String, usize> = Default::default();
    for (path, item) in paths.iter_mut() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            fill_path_params(op, &names);
            // One handler serves a stack's hooks (a writer's) and an org's, which take an admin
            // to change (`hooks::HookCtx`): its attribute names the lesser role.
            if path.starts_with("/api/orgs/{org}/hooks") && method != "get" {
                op.insert("security".into(), json!([{ "token": ["admin"] }]));
            }
            add_common_errors(op, method);
            // `{tag}_{handler}`: handlers of two modules may share a name (`read`).
            let tag = op["tags"][0].as_str().unwrap_or("api").replace('-', "_");
            let handler = op["operationId"].as_str().unwrap_or_default();
            let id = format!("{tag}_{handler}");
            *ids.entry(id.clone()).or_default() += 1;
            op.insert("operationId".into(), json!(id));
        }
    }
    // A handler serving two paths (the preview API's, hooks under an org) names the one that
    // is not under a stack after where it is.
    for (path, item) in paths.iter_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut())
        {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            if ids.get(&id).is_some_and(|n| *n > 1) && scope(path) != "stack" {
                op["operationId"] = json!(format!("{id}_{}", scope(path)));
            }
        }
    }
    add_links(paths);
    doc
}

/// Stateful links (for clients and for schemathesis's stateful phase): what a creation's
/// answer names, and the operations that read it.
const LINKS: &[(&str, &str, &str, &str, &str, &str)] = &[
    // (path, method, status, link, target operation, parameter <- expression)
    (
        STACK_DEPLOYMENTS,
        "post",
        "202",
        "GetDeployment",
        "deployments_get_by_id",
        "id=$response.body#/id",
    ),
    (
        STACK_DEPLOYMENTS,
        "post",
        "202",
        "GetLogs",
        "deployments_logs",
        "id=$response.body#/id",
    ),
    (
        STACK_DEPLOYMENTS,
        "post",
        "202",
        "CancelDeployment",
        "deployments_cancel",
        "id=$response.body#/id",
    ),
    (
        "/api/stacks/{org}/{project}",
        "post",
        "200",
        "GetStack",
        "stacks_get_stack",
        "stack=$response.body#/stackName",
    ),
    (
        "/api/orgs/{org}/agent-pools",
        "post",
        "200",
        "GetPool",
        "agent_pools_get",
        "poolId=$response.body#/id",
    ),
];

const STACK_DEPLOYMENTS: &str = "/api/stacks/{org}/{project}/{stack}/deployments";

fn add_links(paths: &mut Map<String, Value>) {
    for (path, method, status, name, target, param) in LINKS {
        let Some(response) = paths
            .get_mut(*path)
            .and_then(|item| item.get_mut(*method))
            .and_then(|op| op["responses"].get_mut(*status))
        else {
            continue;
        };
        let (to, from) = param
            .split_once('=')
            .expect("a link parameter is name=expression");
        // The target's other path parameters are the request's own.
        let mut parameters = Map::new();
        for own in path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        {
            parameters.insert(own.into(), json!(format!("$request.path.{own}")));
        }
        parameters.insert(to.into(), json!(from));
        response["links"][*name] = json!({ "operationId": target, "parameters": parameters });
    }
}

/// The nesting a path sits in, to tell one handler's two operations apart.
fn scope(path: &str) -> &'static str {
    if path.starts_with("/api/preview/") {
        "preview"
    } else if path.starts_with("/api/orgs/") {
        "org"
    } else {
        "stack"
    }
}

fn fill_path_params(op: &mut Map<String, Value>, names: &[&str]) {
    let params = op
        .entry("parameters")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("parameters is a list");
    for name in names {
        let declared = params
            .iter()
            .any(|p| p["in"] == "path" && p["name"] == *name);
        if !declared {
            params.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": describe(name),
                "schema": { "type": "string", "minLength": 1 },
            }));
        }
    }
    if params.is_empty() {
        op.remove("parameters");
    }
}

fn add_common_errors(op: &mut Map<String, Value>, method: &str) {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" }
            }},
        })
    };
    // The operation's security requirement: an org token's scopes are its least role.
    let requirement = op.get("security").and_then(|s| s.get(0));
    let secured = requirement.is_some();
    let token_scopes = requirement.and_then(|req| req.get("token"));
    let least_role = token_scopes
        .and_then(|scopes| scopes.get(0))
        .and_then(Value::as_str)
        .map(str::to_owned);
    // `super::idempotency`: a POST with an org token may carry a key.
    let idempotent = method == "post" && token_scopes.is_some();
    if idempotent {
        op.entry("parameters")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("parameters is a list")
            .push(json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "Retried with the same key, the request is answered as the first \
                    time (kept 24 hours, per organization)",
                // Visible ASCII, as `idempotency::key` checks it.
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": super::idempotency::MAX_KEY,
                    "pattern": "^[!-~]+$",
                },
            }));
    }
    let has_body = op.contains_key("requestBody");
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error(description));
    };
    for (status, description) in COMMON_ERRORS {
        add(status, description);
    }
    if secured {
        add("401", "No token, a malformed one, or a revoked one");
    }
    // Reads need `read`, the lowest role; anything more can be refused for the role.
    if least_role.is_some_and(|r| r != "read") {
        add("403", "The token's role is below what this needs");
    }
    if idempotent {
        add(
            "409",
            "A request with this Idempotency-Key is still running",
        );
        add("422", "This Idempotency-Key was used for another request");
    }
    if has_body || !matches!(method, "get" | "head" | "delete") {
        add("408", "The request body did not arrive in time");
        add("413", "The request body is too large");
    }
}
