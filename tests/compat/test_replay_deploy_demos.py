"""Replays the pulumi/deploy-demos programs' HTTP calls against a real `tarmac serve`.

Client sources replayed (pulumi/deploy-demos at 2e4ecb3):
- deployment-drivers/go/http/pulumi_api.go and its site handlers (`POST /sites`,
  `GET /sites/:id`, `POST /sites/:id`, `DELETE /sites/:id[?rm]`), last changed in f34c26f;
- deployment-drivers/nodejs/typescript-driver/index.ts (create, 404 auto-create, the step-mode log
  loop), last changed in d9413fa;
- deployment-drivers/python/python-driver/drivers/api.py and __main__.py (destroy; reads `id` and
  `consoleUrl`);
- pulumi-programs/drift-detection/index.ts (a `preview` deployment, polled until succeeded or
  failed);
- pulumi-programs/ttl-stacks/index.ts (reads the `ttl` tag in minutes, then a `destroy`).

Every driver hard-codes `https://api.pulumi.com/api`; here that base is the server under test, and
git sources point at the tests' local repositories instead of github.com. One server per module;
project `demos`.
"""

import json
import time

import pytest

from replay_support import (
    DEADLINE,
    NO_BODY,
    ORG,
    assert_error_body,
    call,
    deploy,
    is_2xx,
    setup,
    stack_outputs,
    stack_path,
    update_from,
    wait_deployment,
)

PROJECT = "demos"

# go/http (resty, JSON bodies from Go structs) and the Python driver (requests, json=).
GO_HTTP_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
# index.ts: fetch() with these on every call.
TS_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
PY_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}

DEPLOYING = {"not-started", "accepted", "running"}


def preview_path(org, project, stack):
    return f"/api/preview/{org}/{project}/{stack}"


# --- go/http: the static-site server -----------------------------------------------------------


def go_http(server, method, path, body=NO_BODY, query=None):
    return call(server, method, path, body, headers=GO_HTTP_HEADERS, query=query)


def go_http_org(server):
    """Startup without -org: GET /api/user, exactly 200, orgs[0]."""
    status, user, _ = go_http(server, "GET", "/api/user")
    assert status == 200, f"{status} {user!r}"
    orgs = [o["githubLogin"] for o in user["organizations"]]
    assert orgs, user
    return orgs[0]


def site_settings(repo_url, site_dir):
    """The settings struct of pulumi_api.go, as marshalled: `Git` has no json tag, the branch is
    "main", and the repo is named only by gitHub.repository.

    Tarmac cannot clone github.com here, so the body ALSO carries sourceContext.Git.repoUrl (the
    local test repository; Tarmac prefers it over gitHub.repository). And the driver's
    operationContext.oidc.aws is left out: Tarmac would really exchange it with AWS STS before
    running, which this environment cannot reach. test_go_http_settings_body_as_sent replays the
    body byte for byte, OIDC included, without deploying it.
    """
    return {
        "sourceContext": {"Git": {"branch": "main", "repoDir": site_dir, "repoUrl": repo_url}},
        "operationContext": {"environmentVariables": {"AWS_REGION": "us-west-2"}},
        "gitHub": {"repository": "pulumi/deploy-demos", "paths": [f"{site_dir}/**"], "deployCommits": True},
    }


def go_http_create_site(server, org, site_id, content, settings):
    """POST /sites {id, content}. Returns ("created", deployment response) or ("exists", None).
    The driver does not read the 202's body; the test keeps it to check which deployment GET
    /sites/:id picks."""
    # 1. Create the stack: exactly 200; 409 is "site already exists"; anything else (201 too) fails.
    status, body, _ = go_http(server, "POST", f"/api/stacks/{org}/{PROJECT}", {"stackName": site_id})
    if status == 409:
        return "exists", None
    assert status == 200, f"create stack must answer exactly 200: {status} {body!r}"
    # 2. Settings, on the legacy singular `deployment/settings` route: exactly 200.
    status, body, _ = go_http(server, "POST", f"{preview_path(org, PROJECT, site_id)}/deployment/settings", settings)
    assert status == 200, f"settings must answer exactly 200: {status} {body!r}"
    # 3. The deployment.
    return "created", go_http_deploy_site(server, org, site_id, content)


def go_http_deploy_site(server, org, site_id, content):
    """Step 3 of create, and POST /sites/:id {content}: exactly 202."""
    status, body, _ = go_http(server, "POST", f"{preview_path(org, PROJECT, site_id)}/deployments", {
        "operationContext": {"environmentVariables": {"SITE_CONTENT": content}},
        "inheritSettings": True,
        "operation": "update",
    })
    assert status == 202, f"create deployment must answer exactly 202: {status} {body!r}"
    return body


def go_http_get_site(server, org, site_id):
    """GET /sites/:id: page the bare-array list until an empty page, take the last element of the
    last non-empty page (oldest first), then read `websiteUrl` from the export.
    Returns (404 | "DEPLOYING" | "READY", that deployment, websiteUrl)."""
    last, page = None, 1
    while True:
        status, items, _ = go_http(server, "GET", f"{preview_path(org, PROJECT, site_id)}/deployments",
                                   query=f"page={page}")
        if status == 404:
            return 404, None, None
        assert status == 200, f"{status} {items!r}"
        assert isinstance(items, list), f"the preview list must be a bare JSON array: {items!r}"
        if not items:
            break
        last = items[-1]
        page += 1
        assert page < 100, "the deployment list never came to an empty page"
    assert last is not None, "a site with no deployment"
    state = "DEPLOYING" if last["status"] in DEPLOYING else "READY"
    status, export, _ = go_http(server, "GET", f"{stack_path(org, PROJECT, site_id)}/export")
    assert status == 200, f"{status} {export!r}"
    url = None
    if export.get("version") == 3:  # otherwise: no outputs
        for r in export["deployment"].get("resources") or []:
            if r.get("type") == "pulumi:pulumi:Stack":
                url = (r.get("outputs") or {}).get("websiteUrl")
    return state, last, url


def go_http_wait_ready(server, org, site_id):
    """A user polling GET /sites/:id until the site is READY."""
    deadline = time.monotonic() + DEADLINE
    while True:
        state, last, url = go_http_get_site(server, org, site_id)
        assert state != 404, f"site {site_id} not found"
        if state == "READY":
            return last, url
        assert time.monotonic() < deadline, f"site {site_id} still {state} ({last['status']})"
        time.sleep(0.5)


def test_go_http_site_lifecycle(server, site_repo):
    org = go_http_org(server)
    assert org == ORG
    site = "site1"
    outcome, first = go_http_create_site(server, org, site, "hello", site_settings(site_repo, "site"))
    assert outcome == "created"
    last, url = go_http_wait_ready(server, org, site)
    assert last["id"] == first["id"], "the last element of the last page must be the newest"
    assert last["status"] == "succeeded", last
    assert url == "http://site.example.test/index.html", url

    # POST /sites with the same id: 409 -> "site already exists".
    assert go_http_create_site(server, org, site, "again", site_settings(site_repo, "site"))[0] == "exists"

    # POST /sites/:id {content}: a new deployment; GET /sites/:id follows it.
    second = go_http_deploy_site(server, org, site, "hello v2")
    last, url = go_http_wait_ready(server, org, site)
    assert last["id"] == second["id"], (last, second)
    assert last["status"] == "succeeded", last

    # DELETE /sites/:id (no ?rm): destroy, exactly 202.
    status, third, _ = go_http(server, "POST", f"{preview_path(org, PROJECT, site)}/deployments",
                               {"inheritSettings": True, "operation": "destroy"})
    assert status == 202, f"{status} {third!r}"
    last, url = go_http_wait_ready(server, org, site)
    assert last["id"] == third["id"], (last, third)
    assert last["status"] == "succeeded", last
    assert url is None, f"the destroyed site still has a websiteUrl: {url}"

    # Test-side, the paging the driver relies on: oldest first, an empty page past the end.
    pages = []
    for page in (1, 2, 3):
        status, items, _ = setup(server, "GET", f"{preview_path(org, PROJECT, site)}/deployments",
                                 query=f"page={page}&pageSize=2")
        assert status == 200, items
        pages.append([d["id"] for d in items])
    assert pages == [[first["id"], second["id"]], [third["id"]], []], pages

    # DELETE /sites/:id?rm: DELETE the stack with no query, exactly 204.
    status, body, _ = go_http(server, "DELETE", stack_path(org, PROJECT, site))
    assert status == 204, f"delete stack must answer exactly 204: {status} {body!r}"
    # The site is gone: its list answers 404 ("site not found").
    status, body, _ = go_http(server, "GET", f"{preview_path(org, PROJECT, site)}/deployments",
                              query="page=1")
    assert_error_body(status, body, 404, "deployments of a removed site")


def test_go_http_settings_body_as_sent(server):
    """The settings body exactly as pulumi_api.go marshals it (OIDC included, no repo URL):
    accepted with exactly 200, and stored with the capital-G `Git` read as the git source."""
    org = go_http_org(server)
    site = "site-shape"
    status, body, _ = go_http(server, "POST", f"/api/stacks/{org}/{PROJECT}", {"stackName": site})
    assert status == 200, body
    sent = {
        "sourceContext": {"Git": {"branch": "main", "repoDir": "site"}},
        "operationContext": {
            "environmentVariables": {"AWS_REGION": "us-west-2"},
            "oidc": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/site-deploy",
                             "sessionName": "site-deploy"}},
        },
        "gitHub": {"repository": "pulumi/deploy-demos", "paths": ["site/**"], "deployCommits": True},
    }
    status, body, _ = go_http(server, "POST", f"{preview_path(org, PROJECT, site)}/deployment/settings", sent)
    assert status == 200, f"settings must answer exactly 200: {status} {body!r}"
    status, saved, _ = setup(server, "GET", f"{preview_path(org, PROJECT, site)}/deployment/settings")
    assert status == 200, saved
    git = saved["sourceContext"]["git"]
    assert (git.get("branch"), git.get("repoDir")) == ("main", "site"), saved
    assert saved["gitHub"]["repository"] == "pulumi/deploy-demos", saved
    assert saved["gitHub"]["paths"] == ["site/**"] and saved["gitHub"]["deployCommits"] is True
    assert saved["operationContext"]["oidc"]["aws"]["roleArn"].endswith(":role/site-deploy"), saved
    assert saved["operationContext"]["environmentVariables"] == {"AWS_REGION": "us-west-2"}, saved


# --- nodejs/typescript-driver ------------------------------------------------------------------


class TsError(Exception):
    """index.ts throws `failed to call <suffix>: <body text>` on a non-2xx answer."""


def ts_fetch(server, method, suffix, body=NO_BODY):
    """index.ts: fetch(`${API}/${suffix}`); `response.json()` on every success."""
    status, parsed, _ = call(server, method, f"/api/{suffix}", body, headers=TS_HEADERS)
    if not is_2xx(status):
        raise TsError(f"failed to call {suffix}: {json.dumps(parsed) if parsed is not None else ''}")
    assert parsed is not None, f"response.json() would throw: {method} {suffix} answered {status} without JSON"
    return parsed


def ts_create_deployment(server, org, stack, body):
    suffix = f"preview/{org}/{PROJECT}/{stack}/deployments"
    try:
        return ts_fetch(server, "POST", suffix, body)
    except TsError as e:
        if "404" not in str(e):  # the auto-create path keys on the body text
            raise
    ts_fetch(server, "POST", f"stacks/{org}/{PROJECT}", {"stackName": stack})
    return ts_fetch(server, "POST", suffix, body)


def ts_follow(server, org, stack, dep_id):
    """index.ts's polling loop: status, then step-mode logs following `nextOffset`, moving to the
    next step when it is absent, until the step count. Returns (deployment, printed lines, steps
    read, step count)."""
    base = f"preview/{org}/{PROJECT}/{stack}/deployments/{dep_id}"
    printed, step, offset, count = [], 0, 0, 0
    deadline = time.monotonic() + DEADLINE
    while True:
        dep = ts_fetch(server, "GET", base)
        status = dep.get("status") or ""
        if status in ("running", "succeeded", "failed"):
            count = len(dep["jobs"][0]["steps"])  # a TypeError in the driver if absent
            while step < count:
                logs = ts_fetch(server, "GET", f"{base}/logs?job=0&step={step}&offset={offset}")
                for line in logs.get("lines") or []:
                    assert isinstance(line.get("timestamp"), str) and line["timestamp"], line
                    printed.append(f"{line['timestamp']} {line.get('line')}")
                next_offset = logs.get("nextOffset")
                if next_offset is None:
                    step, offset = step + 1, 0
                    continue
                if next_offset == offset:
                    break  # nothing new in this step yet
                offset = next_offset
        if status not in DEPLOYING and status != "":
            return dep, printed, step, count
        assert time.monotonic() < deadline, f"deployment {dep_id} still {status}"
        time.sleep(0.5)  # the driver waits 2 s


@pytest.fixture(scope="module")
def ts_deployed(server, repo):
    """The TypeScript driver's update of stack `ts` (the stack is new: the driver creates it if
    the deployment create answers 404)."""
    body = {
        "sourceContext": {"git": {"repoURL": repo, "branch": "refs/heads/main", "repoDir": "infra"}},
        "operationContext": {"operation": "update", "preRunCommands": [], "environmentVariables": {}},
    }
    created = ts_create_deployment(server, ORG, "ts", body)
    assert isinstance(created.get("id"), str), created
    return created, ts_follow(server, ORG, "ts", created["id"])


def test_typescript_driver_update(ts_deployed):
    created, (dep, printed, steps_read, step_count) = ts_deployed
    assert dep["status"] == "succeeded", dep
    assert dep.get("pulumiOperation") == "update", "operationContext.operation is the operation here"
    assert step_count >= 2 and steps_read == step_count, (steps_read, step_count)
    text = "\n".join(printed)
    assert "terraform apply" in text and "Apply complete" in text, text


# --- pulumi-programs/drift-detection -----------------------------------------------------------


def test_drift_detection_preview(server, repo, ts_deployed):
    assert ts_deployed[1][0]["status"] == "succeeded"
    # The program's dummy source (pulumi/examples, refs/heads/master, aws-go-lambda) is replaced by
    # the stack's own program; its pre-run commands write a Pulumi.yaml and run `pulumi refresh
    # --expect-no-changes`, which would turn this Terraform program into a Pulumi one, so one
    # plain command stands in for them.
    body = {
        "sourceContext": {"git": {"repoURL": repo, "branch": "refs/heads/main", "repoDir": "infra"}},
        "operationContext": {
            "operation": "preview",
            "preRunCommands": [f"echo drift check of {ORG}/{PROJECT}/ts"],
            "environmentVariables": {
                "AWS_REGION": "us-west-2",
                "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": {"secret": "example-secret"},
                "AWS_SESSION_TOKEN": {"secret": "example-session"},
            },
        },
    }
    status, created, _ = call(server, "POST", f"{preview_path(ORG, PROJECT, 'ts')}/deployments", body,
                              headers=TS_HEADERS)
    assert is_2xx(status), f"{status} {created!r}"
    dep_id, console = created["id"], created["consoleUrl"]
    assert dep_id and console
    # Polled until succeeded or failed, the only statuses it knows as final.
    deadline = time.monotonic() + DEADLINE
    while True:
        status, dep, _ = call(server, "GET", f"{preview_path(ORG, PROJECT, 'ts')}/deployments/{dep_id}",
                              headers=TS_HEADERS)
        assert status == 200, dep
        assert dep["status"] != "skipped", "a skipped deployment makes the drift program poll forever"
        if dep["status"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, f"drift preview still {dep['status']}"
        time.sleep(0.5)  # the program waits 2 s
    assert dep["status"] == "succeeded", "failed would be reported as drift"
    assert dep.get("pulumiOperation") == "preview", dep


# --- python-driver -----------------------------------------------------------------------------


def test_python_driver_destroy(server, repo, ts_deployed):
    assert ts_deployed[1][0]["status"] == "succeeded"
    suffix = f"{preview_path(ORG, PROJECT, 'ts')}/deployments"
    # drivers/api.py; branch refs/heads/master in the original, the test repo has main.
    body = {"sourceContext": {"git": {"repoURL": repo, "branch": "refs/heads/main", "repoDir": "infra"}},
            "operationContext": {"operation": "destroy"}}
    status, created, _ = call(server, "POST", suffix, body, headers=PY_HEADERS)
    if status == 404:
        status, made, _ = call(server, "POST", f"/api/stacks/{ORG}/{PROJECT}", {"stackName": "ts"},
                               headers=PY_HEADERS)
        assert is_2xx(status), made
        status, created, _ = call(server, "POST", suffix, body, headers=PY_HEADERS)
    assert is_2xx(status), f"{status} {created!r}"
    dep_id, console = created["id"], created["consoleUrl"]  # a KeyError in the driver if missing
    assert dep_id and console
    done = wait_deployment(server, stack_path(ORG, PROJECT, "ts"), dep_id)
    assert done["status"] == "succeeded", done
    assert done.get("pulumiOperation") == "destroy", done
    assert "val" not in stack_outputs(server, stack_path(ORG, PROJECT, "ts"))


# --- pulumi-programs/ttl-stacks ----------------------------------------------------------------


def test_ttl_stacks_destroy(server, repo):
    stack = stack_path(ORG, PROJECT, "ttl")
    # Test-side: a deployed stack, tagged as `pulumi stack tag set ttl 45` would.
    assert deploy(server, stack, update_from(repo))["status"] == "succeeded"
    status, body, _ = setup(server, "POST", f"{stack}/tags", {"name": "ttl", "value": "45"})
    assert status == 204, body

    # On a stack_update webhook: GET the stack, read tags.ttl in minutes (parseInt(ttl) || 30).
    status, got, _ = call(server, "GET", stack, headers=TS_HEADERS)
    assert status == 200, got
    raw = (got.get("tags") or {}).get("ttl")
    assert raw == "45", got
    minutes = int(raw) if raw and raw.isdigit() and int(raw) else 30
    assert minutes == 45
    # The queue consumer retries until expiration (now + ttl minutes) has passed; the test does
    # not wait 45 minutes, it replays the destroy that then follows (its answer is not checked).
    body = {
        "sourceContext": {"git": {"repoURL": repo, "branch": "refs/heads/main", "repoDir": "infra"}},
        "operationContext": {
            "operation": "destroy",
            "preRunCommands": [f"echo ttl of {ORG}/{PROJECT}/ttl expired"],
            "environmentVariables": {"AWS_REGION": "us-west-2"},
        },
    }
    status, created, _ = call(server, "POST", f"{preview_path(ORG, PROJECT, 'ttl')}/deployments", body,
                              headers=TS_HEADERS)
    assert status == 202, f"{status} {created!r}"
    done = wait_deployment(server, stack, created["id"])
    assert done["status"] == "succeeded", done
    assert done.get("pulumiOperation") == "destroy", done
    assert "val" not in stack_outputs(server, stack)
