//! What the server reads of a request before it refuses it: a URL of at most 8 KiB (414), at
//! most 16 KiB of header names and values (431), and a JSON body that arrives within the
//! request timeout (408). Each refusal is `{code, message}`.
//!
//! Below these, `tarmac serve`'s connection handling (see `crate::serve`) stops what never
//! reaches a handler: headers that do not arrive within the request timeout close the
//! connection (slow clients), a request head well past the 64 KiB read buffer gets hyper's bare
//! 431 and the connection's end, and
//! connections past `--max-connections` are closed as they are accepted.

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Error;

pub const MAX_URI_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a request's head, and then its body, may take to arrive, where the server did not
/// set one (Lambda, where API Gateway has its own limits).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's request timeout, as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeout(pub Duration);

pub(crate) fn request_timeout(req: &Request) -> Duration {
    req.extensions()
        .get::<RequestTimeout>()
        .map_or(DEFAULT_REQUEST_TIMEOUT, |t| t.0)
}

pub(crate) async fn check(req: Request, next: Next) -> Result<Response, Error> {
    // Counted, not rendered: this runs on every request.
    let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return Err(Error::Limit(
            StatusCode::URI_TOO_LONG,
            format!("the URL has {uri} bytes; the limit is {MAX_URI_BYTES}"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Err(Error::Limit(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the headers have {headers} bytes; the limit is {MAX_HEADER_BYTES}"),
        ));
    }
    Ok(next.run(req).await)
}
