//! The web console: a static single-page app compiled into the binary (`shared/console/`),
//! served at `/` by the same router as the API, so `tarmac serve` and the `api` Lambda behind
//! API Gateway serve it alike. It is a client of the public API and nothing else.
//!
//! `/console/<file>` serves its files; every other GET that is not the API's or the OIDC
//! issuer's answers its `index.html`, so deep links (the `consoleUrl` of every deployment,
//! `/{org}/{project}/{stack}/deployments/{version}`) open the app, which routes on the path.
//!
//! The console may be reached under a path prefix that never reaches the server (API Gateway's
//! `/_aws/execute-api/{id}/$default` in the emulator, a custom domain's base path mapping, a
//! reverse proxy). The server does not know that prefix, but it knows the path it received,
//! and the browser knows its whole location. So `index.html` is a template: its files are
//! referenced relatively, as deep as the received path, and the received path is in
//! `<meta name="tarmac-path">`, from which the app works out the prefix (`js/base.js`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static CONSOLE: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// Where the console's files are served.
pub(super) const ASSETS: &str = "/console/";

/// No script but the console's own files, no external origin at all, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json" | "webmanifest") => "application/json",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Option<Response> {
    let f = CONSOLE.get_file(path)?;
    Some(
        (
            [
                (header::CONTENT_TYPE, content_type(path)),
                // The files change with the binary; `index.html` is always fetched anew.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from(f.contents()),
        )
            .into_response(),
    )
}

/// The page's template: `{{root}}` becomes the way up from the received path to where
/// `console/` is, `{{path}}` the received path.
const INDEX: &str = "index.html";

/// The app's page, for `/` and deep links, as received at `path` (after any prefix that a
/// gateway or proxy removed).
pub(super) fn index(path: &str) -> Response {
    let Some(template) = CONSOLE.get_file(INDEX).and_then(|f| f.contents_utf8()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // `/a/b/c` is two levels below the root (`../../console/app.css`), `/a/` one, `/` none.
    let root = "../".repeat(path.matches('/').count().saturating_sub(1));
    let html = template
        .replace("{{root}}", &root)
        .replace("{{path}}", &html_escape(path));
    (
        [
            (header::CONTENT_TYPE, content_type(INDEX)),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// Text for an HTML attribute value.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /console/<path>`.
pub(super) fn asset(path: &str) -> Option<Response> {
    // `include_dir` paths are relative and never contain `..`; a request's are refused if they
    // try.
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return None;
    }
    // The page is only served filled in.
    if path == INDEX {
        return None;
    }
    file(path)
}

/// Whether a request that matched no API route is the console's: a GET or HEAD outside the
/// API and the issuer's documents.
pub(super) fn is_page(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !path.starts_with("/api/")
        && path != "/api"
        && !path.starts_with("/oidc/")
}

/// Security headers on every response: the console's pages are strict, and so is the API
/// (JSON must never be sniffed into something executable).
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_everything_but_the_api_and_the_issuer() {
        for (method, path, page) in [
            (Method::GET, "/", true),
            (Method::GET, "/acme/web/dev/deployments/3", true),
            (Method::HEAD, "/acme", true),
            (Method::POST, "/", false),
            (Method::GET, "/api/stacks/a/b/c", false),
            (Method::GET, "/oidc/.well-known/jwks.json", false),
        ] {
            assert_eq!(is_page(&method, path), page, "{method} {path}");
        }
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("js//x.js").is_none());
        assert!(asset(INDEX).is_none());
    }

    async fn page(path: &str) -> String {
        let resp = index(path);
        assert!(resp.status().is_success(), "{path}");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache", "{path}");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_finds_its_files_relatively_and_names_the_path_it_was_served_at() {
        for (path, root) in [
            ("/", ""),
            ("/acme", ""),
            ("/acme/", "../"),
            ("/acme/web/dev", "../../"),
            ("/acme/web/dev/deployments/3", "../../../../"),
        ] {
            let html = page(path).await;
            for file in [
                "console/app.css",
                "console/js/app.js",
                "console/favicon.svg",
            ] {
                assert!(
                    html.contains(&format!("\"{root}{file}\"")),
                    "{path}: {html}"
                );
            }
            assert!(
                html.contains(&format!("<meta name=\"tarmac-path\" content=\"{path}\">")),
                "{path}: {html}"
            );
            assert!(
                !html.contains("{{") && !html.contains("\"/console/"),
                "{html}"
            );
        }
        let html = page("/a&b/<x>/\"q'").await;
        assert!(
            html.contains("content=\"/a&amp;b/&lt;x&gt;/&quot;q&#39;\""),
            "{html}"
        );
        assert!(html.contains("\"../../console/app.css\""), "{html}");
    }
}
