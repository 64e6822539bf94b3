"""Plumbing shared by the test_replay_*.py files, which replay real Pulumi clients call for call:
one HTTP helper, Go's query encoding and time formats, and the polling the tests themselves
need around the clients' calls.

Everything here is the standard library: each client's own headers are passed in by its file.
"""

import datetime
import gzip
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

ORG = "default"  # the org of the bootstrap token of every fresh data dir
DEADLINE = 60.0  # seconds any single wait may take
TERMINAL = {"succeeded", "failed", "skipped"}

# Marks "send no body" (a JSON `null` body is `None`).
NO_BODY = object()

# Tarmac's own clients and the tests' setup calls (not a replay of any Pulumi client).
SETUP_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def call(server, method, path, body=NO_BODY, *, headers, query=None, token=None, auth=True):
    """One HTTP request to the server under test: `path` is appended to its URL as is, `query` is
    an already encoded string (or a dict, encoded in its own order), `body` is sent as compact
    JSON unless it is `NO_BODY` (or bytes, sent as they are).

    Returns (status, parsed JSON body or None when the body is empty or not JSON, headers).
    """
    url = server.url.rstrip("/") + path
    if query:
        url += "?" + (query if isinstance(query, str) else urllib.parse.urlencode(query))
    data = None
    if body is not NO_BODY:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    h = dict(headers)
    if auth:
        h["Authorization"] = f"token {token or server.token}"
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, resp_headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, resp_headers = e.code, e.read(), e.headers
    encoding = (resp_headers.get("Content-Encoding") or "").lower()
    if encoding in ("gzip", "x-gzip"):
        raw = gzip.decompress(raw)
    else:
        # The CLI refuses any other encoding (api.go); the other clients never ask for one.
        assert encoding in ("", "identity"), f"{method} {path}: Content-Encoding {encoding!r}"
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except ValueError:
        parsed = None
    return status, parsed, resp_headers


def setup(server, method, path, body=NO_BODY, query=None):
    """A call made by the test itself (setup or an outcome check), with plain JSON headers."""
    return call(server, method, path, body, headers=SETUP_HEADERS, query=query)


def go_query(params):
    """Go's `url.Values.Encode()`: keys sorted, values query-escaped."""
    return urllib.parse.urlencode(sorted((k, str(v)) for k, v in params.items()))


def stack_path(org, project, stack):
    """`/api/stacks/{o}/{p}/{s}`, names not escaped (the CLI's client.go:getStackPath)."""
    return f"/api/stacks/{org}/{project}/{stack}"


def is_2xx(status):
    return 200 <= status < 300


def assert_error_body(status, body, expected, what):
    """An error answer as every client decodes it: HTTP `expected`, JSON `{"code": expected,
    "message": ...}` (the CLI keeps a JSON body's `code` as is, api.go)."""
    assert status == expected, f"{what}: expected HTTP {expected}, got {status} {body!r}"
    assert isinstance(body, dict), f"{what}: error body is not a JSON object: {body!r}"
    assert body.get("code") == expected, f"{what}: error body code is not {expected}: {body!r}"
    assert isinstance(body.get("message"), str) and body["message"], f"{what}: {body!r}"


# Go's `time.Time` JSON decoding (RFC 3339, fractional seconds allowed). `""` fails it.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def assert_go_time(value, what):
    """A field a Go client decodes into `time.Time`: RFC 3339, or null/absent (None)."""
    assert value is None or (isinstance(value, str) and _RFC3339.fullmatch(value)), (
        f"{what} is {value!r}: a Go time.Time must be RFC 3339, null or absent"
    )


# Go's `time.Parse(time.DateTime, v)`: "2006-01-02 15:04:05", plus an optional fractional part,
# which Go accepts after a seconds field; anything else (a "T", a zone) is "extra text".
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(\.\d+)?")


def parse_go_datetime(value, what):
    assert isinstance(value, str), f"{what} is {value!r}, not a string"
    m = _DATETIME.fullmatch(value)
    assert m, f"{what} is {value!r}: time.Parse(time.DateTime, ...) would refuse it"
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")


def wait_for(check, what, timeout=DEADLINE, interval=0.25):
    """Calls `check()` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def wait_deployment(server, stack, dep_id, timeout=DEADLINE):
    """Polls GET S/deployments/{id} (test-side) until the deployment is terminal; returns it."""
    def done():
        status, body, _ = setup(server, "GET", f"{stack}/deployments/{dep_id}")
        assert status == 200, f"GET deployment {dep_id}: {status} {body!r}"
        return body if body.get("status") in TERMINAL else None
    return wait_for(done, f"deployment {dep_id} to finish", timeout)


def stack_deployments(server, stack):
    """Every deployment of a stack, newest first (test-side, v2 list)."""
    status, body, _ = setup(server, "GET", f"{stack}/deployments", query="page=1&pageSize=100")
    assert status == 200, f"list deployments of {stack}: {status} {body!r}"
    return body["deployments"]


def stack_outputs(server, stack):
    """The outputs of the `pulumi:pulumi:Stack` resource in GET S/export (test-side)."""
    status, body, _ = setup(server, "GET", f"{stack}/export")
    assert status == 200, f"export {stack}: {status} {body!r}"
    resources = (body.get("deployment") or {}).get("resources") or []
    stacks = [r for r in resources if r.get("type") == "pulumi:pulumi:Stack"]
    return (stacks[0].get("outputs") or {}) if stacks else {}


def deploy(server, stack, body):
    """Creates a deployment through the v2 route (test-side) and waits for it; returns it."""
    status, created, _ = setup(server, "POST", f"{stack}/deployments", body)
    assert status == 202, f"create deployment on {stack}: {status} {created!r}"
    return wait_deployment(server, stack, created["id"])


def update_from(repo_url, repo_dir="infra", env=None):
    """A non-inheriting update of `repo_url`'s main branch (test-side setup)."""
    body = {
        "operation": "update",
        "inheritSettings": False,
        "sourceContext": {"git": {"repoUrl": repo_url, "branch": "refs/heads/main", "repoDir": repo_dir}},
    }
    if env:
        body["operationContext"] = {"environmentVariables": env}
    return body
