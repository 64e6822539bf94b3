"""Replays the Pulumi CLI's remote-deployment traffic, and Automation API's remote workspace on top
of it, call for call against a real `tarmac serve`.

Client sources replayed (pulumi/pulumi at 1b5949891b):
- pkg/backend/httpstate/client/api.go: `pulumiAPICall`, `defaultRESTClient.Call` (the headers on
  every request, how error bodies are decoded);
- pkg/backend/httpstate/client/client.go: `GetPulumiAccountDetails`, `GetCapabilities`,
  `GetDefaultOrg`, `GetStack`, `CreateStack`, `DeleteStack`, `UpdateStackTags`,
  `CreateDeployment`, `GetDeploymentLogs`, `GetDeploymentUpdates`, `GetUpdateEngineEvents`,
  `ListDeployments`, `GetDeployment`, `CancelStackDeployment`, `ExportStackDeployment`,
  `GetStackUpdates`, `getStackPath`;
- pkg/backend/httpstate/backend.go: `New`, `detectCapabilities`, `detectUserInfo`,
  `cloudBackend.RunDeployment` (the log loop), `showDeploymentEvents` (updates discovery and the
  events loop);
- pkg/cmd/pulumi/deployment/deployment_run.go and remote.go (`RunDeployment`,
  `ApplyFlagsForDeploymentCommand`): `pulumi deployment run` and `pulumi up --remote`;
- pkg/cmd/pulumi/deployment/list_deployments.go and the get/log/cancel commands (§2.8);
- pkg/cmd/pulumi/stack/ (`stack tag set|rm`, `stack rm`), pkg/util/validation/stack.go
  (`ValidateStackTags`);
- sdk/go/common/apitype/deployments.go, events.go, service.go, core.go: the bodies sent and the
  shapes decoded; pkg/backend/display/events.go (`ConvertJSONEvent`): the event payloads the CLI
  renders;
- sdk/go/auto/local_workspace.go, stack.go, remote_workspace.go: `UpsertStack`,
  `RemoteStack.Up` (then `StackOutputs`, `History(1,1)`) and `RemoteStack.Preview`.

One server per module. Stacks (org `default`, project `cli`): `run` (saved settings, inheriting
runs), `fail` (a program that fails), `remote` (`up --remote`), `auto` (UpsertStack + remote
preview), `slow` (cancel), `tags`.
"""

import json
import re
import time
from dataclasses import dataclass, field

import pytest

from replay_support import (
    DEADLINE,
    NO_BODY,
    ORG,
    assert_error_body,
    assert_go_time,
    call,
    go_query,
    is_2xx,
    setup,
    stack_outputs,
    stack_path,
    wait_deployment,
    wait_for,
)

PROJECT = "cli"

# api.go:pulumiAPICall: on every request, GETs included. Accept is +9 since v3.233.0.
CLI_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/vnd.pulumi+9",
    "Accept-Encoding": "gzip",
    "User-Agent": "pulumi-cli/1 (v3.259.0; linux)",
}
# remote.go: hard-coded for both `deployment run` and `--remote`.
INITIATOR = {"X-Pulumi-Deployment-Initiator": "automation-api"}

# display/events.go:ConvertJSONEvent: an event must carry exactly one of these.
KNOWN_EVENT_KEYS = {
    "cancelEvent", "stdoutEvent", "diagnosticEvent", "preludeEvent", "summaryEvent",
    "resourcePreEvent", "resOutputsEvent", "resOpFailedEvent", "policyEvent",
    "policyRemediationEvent", "policyLoadEvent", "policyAnalyzeSummaryEvent",
    "policyRemediateSummaryEvent", "policyAnalyzeStackSummaryEvent", "startDebuggingEvent",
    "progressEvent", "errorEvent",
}
OP_TYPES = {
    "same", "create", "update", "delete", "replace", "create-replacement", "delete-replaced",
    "read", "read-replacement", "refresh", "discard", "discard-replaced",
    "remove-pending-replace", "import", "import-replacement",
}
DIFF_KINDS = {"add", "add-replace", "delete", "delete-replace", "update", "update-replace"}
SEVERITIES = {"info", "info#err", "warning", "error"}


def cli(server, method, path, body=NO_BODY, query=None, extra=None):
    return call(server, method, path, body, headers={**CLI_HEADERS, **(extra or {})}, query=query)


def require_ok(status, body, what):
    """api.go: any non-2xx answer is an error (its body decoded as ErrorResponse)."""
    assert is_2xx(status), f"the CLI would fail: {what} answered {status} {body!r}"


def deployment_body(operation, inherit, url=None, branch=None, repo_dir=None, env=None,
                    secret_env=None, pre_run=None):
    """apitype.CreateDeploymentRequest as remote.go:RunDeployment fills it from the flags (§2.4),
    in Go's field order."""
    body = {
        "operation": operation,
        "inheritSettings": inherit,  # no omitempty
        "executorContext": {"workingDirectory": ""},  # always present
    }
    if url or branch or repo_dir:
        # `repoUrl` and `branch` have no omitempty; `repoDir` has.
        git = {"repoUrl": url or "", "branch": branch or ""}
        if repo_dir:
            git["repoDir"] = repo_dir
        body["sourceContext"] = {"git": git}
    variables = dict(env or {})
    variables.update({k: {"secret": v} for k, v in (secret_env or {}).items()})
    body["operationContext"] = {
        "preRunCommands": list(pre_run or []),  # cobra's default: [] not null
        "operation": "",  # no omitempty
        "environmentVariables": dict(sorted(variables.items())),  # Go marshals maps sorted
    }
    body["agentPoolID"] = None  # AgentPoolIDMarshaller: "" -> null
    return body


def get_stack(server, org, project, stack):
    """client.go:GetStack; `RequireStack` for `pulumi deployment run` (§2.2 step 2)."""
    return cli(server, "GET", stack_path(org, project, stack))


def require_stack(server, org, project, stack):
    """RequireStack, then RunDeployment's parse of the fully qualified name taken from the GetStack
    response (§2.2 step 4). Returns the stack path the later calls use."""
    status, body, _ = get_stack(server, org, project, stack)
    assert status == 200, f"no stack named '{org}/{project}/{stack}' found: {status} {body!r}"
    names = (body.get("orgName"), body.get("projectName"), body.get("stackName"))
    assert names == (org, project, stack), body
    # newStack asserts the name is valid (tokens/stack_name.go), else the CLI panics.
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", body["stackName"]), body
    return stack_path(*names)


def create_stack(server, project, stack):
    """client.go:CreateStack as `pulumi stack init org/p/s` sends it for Automation API's
    NewStack: `{"stackName"}` only (§3.2)."""
    return cli(server, "POST", f"/api/stacks/{ORG}/{project}", {"stackName": stack})


def new_stack(server, stack):
    status, body, _ = create_stack(server, PROJECT, stack)
    assert status == 200, f"create stack {stack}: {status} {body!r}"
    return stack_path(ORG, PROJECT, stack)


def edit_settings(server, stack, patch):
    """`pulumi deployment settings edit` (§2.8): POST a partial patch, then GET the settings."""
    status, body, _ = cli(server, "POST", f"{stack}/deployments/settings", patch)
    require_ok(status, body, "POST settings")
    status, body, _ = cli(server, "GET", f"{stack}/deployments/settings")
    assert status == 200, body
    return body


def check_deployment(dep, what):
    """What apitype.GetDeploymentResponse decoding requires (§2.7)."""
    assert isinstance(dep, dict), f"{what}: {dep!r}"
    for key in ("id", "created", "modified", "status"):
        assert isinstance(dep.get(key), str), f"{what}: {key} is {dep.get(key)!r}"
    assert type(dep.get("version")) is int, f"{what}: version {dep.get('version')!r}"
    assert isinstance(dep.get("requestedBy"), dict), f"{what}: requestedBy {dep.get('requestedBy')!r}"
    for i, job in enumerate(dep.get("jobs") or []):
        assert_go_time(job.get("started"), f"{what}: jobs[{i}].started")
        assert_go_time(job.get("lastUpdated"), f"{what}: jobs[{i}].lastUpdated")
        for j, step in enumerate(job.get("steps") or []):
            assert_go_time(step.get("started"), f"{what}: jobs[{i}].steps[{j}].started")
            assert_go_time(step.get("lastUpdated"), f"{what}: jobs[{i}].steps[{j}].lastUpdated")
    for u in dep.get("updates") or []:
        assert isinstance(u.get("updateID"), str), f"{what}: {u!r}"
        for key in ("version", "startTime", "endTime"):
            assert key not in u or type(u[key]) is int, f"{what}: updates[].{key} {u!r}"


def check_log_line(line, what):
    """apitype.DeploymentLogs.lines[] decoding: `timestamp` is a time.Time; lines are printed
    verbatim, so each carries its own newline (§2.5, §8 item 7)."""
    assert isinstance(line, dict), f"{what}: {line!r}"
    assert_go_time(line.get("timestamp"), f"{what}: timestamp of {line!r}")
    if not line.get("header"):
        text = line.get("line")
        assert isinstance(text, str) and text.endswith("\n"), f"{what}: line without newline {line!r}"


def check_engine_event(ev):
    """display/events.go:ConvertJSONEvent and apitype/events.go: exactly one known payload key,
    `sequence` and `timestamp` are integers, and the fields the CLI reads have their types.
    Returns (payload key, payload)."""
    assert isinstance(ev, dict), ev
    keys = [k for k in ev if k in KNOWN_EVENT_KEYS]
    assert len(keys) == 1, f"unknown event type (payload keys {keys}): {ev!r}"
    for key in ("sequence", "timestamp"):
        assert type(ev.get(key)) is int, f"{key} must be an integer: {ev!r}"
    kind = keys[0]
    p = ev[kind]
    assert isinstance(p, dict), ev
    if kind == "diagnosticEvent":
        assert isinstance(p.get("message"), str) and isinstance(p.get("color"), str), ev
        assert p.get("severity") in SEVERITIES, ev
    elif kind == "stdoutEvent":
        assert isinstance(p.get("message"), str) and isinstance(p.get("color"), str), ev
    elif kind == "preludeEvent":
        config = p.get("config") or {}
        assert isinstance(config, dict) and all(isinstance(v, str) for v in config.values()), ev
    elif kind == "summaryEvent":
        assert type(p.get("maybeCorrupt")) is bool, ev
        assert type(p.get("durationSeconds")) is int, ev
        changes = p.get("resourceChanges") or {}
        assert isinstance(changes, dict), ev
        assert set(changes) <= OP_TYPES and all(type(n) is int for n in changes.values()), ev
        assert isinstance(p.get("PolicyPacks") or {}, dict), ev
        assert type(p.get("isPreview")) is bool, ev
        assert p.get("result") in ("succeeded", "failed", "canceled"), ev
    elif kind in ("resourcePreEvent", "resOutputsEvent", "resOpFailedEvent"):
        meta = p.get("metadata")
        assert isinstance(meta, dict), ev
        for key in ("op", "urn", "type"):
            assert isinstance(meta.get(key), str), ev
        # An unknown diffKind panics the CLI (contract.Failf).
        for diff in (meta.get("detailedDiff") or {}).values():
            assert diff.get("diffKind") in DIFF_KINDS, ev
        if kind == "resOpFailedEvent":
            assert type(p.get("status")) is int and type(p.get("steps")) is int, ev
    elif kind == "errorEvent":
        assert isinstance(p.get("error"), str), ev
    return kind, p


@dataclass
class CliRun:
    """What one `pulumi deployment run` / `pulumi up --remote` saw and printed."""
    stack: str
    operation: str
    deployment_id: str = ""
    console_url: str = ""
    printed: list = field(default_factory=list)
    log_lines: list = field(default_factory=list)
    update: dict = None
    events: list = field(default_factory=list)
    summary: dict = None
    # The error the CLI would exit with; None means exit 0.
    error: str = None

    @property
    def text(self):
        return "".join(self.printed)

    @property
    def summaries(self):
        return [e["summaryEvent"] for e in self.events if "summaryEvent" in e]


def run_deployment(server, stack, operation, body, stream=True):
    """remote.go:RunDeployment and backend.go:cloudBackend.RunDeployment (§2.2 steps 5-7, §2.3)."""
    run = CliRun(stack=stack, operation=operation)
    # client.go:CreateDeployment. Any 2xx; only `id` and `consoleUrl` are read.
    status, resp, _ = cli(server, "POST", f"{stack}/deployments", body, extra=INITIATOR)
    require_ok(status, resp, "POST deployments")
    assert isinstance(resp, dict) and isinstance(resp.get("id"), str) and resp["id"], resp
    run.deployment_id = resp["id"]
    run.console_url = resp.get("consoleUrl") or ""
    run.printed.append("Preparing deployment...\n")
    if run.console_url:
        run.printed.append(f"View Live: {run.console_url}\n")
    if not stream:
        return run  # --suppress-stream-logs=true: no polling, exit 0
    follow_logs(server, run)
    return run


def follow_logs(server, run):
    """backend.go:cloudBackend.RunDeployment's log loop (§2.5)."""
    logs_path = f"{run.stack}/deployments/{run.deployment_id}/logs"
    token = ""
    deadline = time.monotonic() + DEADLINE
    while True:
        # No parameter on the first call; client.go:GetDeploymentLogs encodes url.Values.
        query = go_query({"continuationToken": token}) if token else None
        status, logs, _ = cli(server, "GET", logs_path, query=query)
        require_ok(status, logs, "GET logs")
        assert isinstance(logs, dict), logs
        for line in logs.get("lines") or []:
            check_log_line(line, "deployment logs")
            run.log_lines.append(line)
            header = line.get("header") or ""
            if header:
                run.printed.append(f"\n{header}:\n")
                if header == f"pulumi {run.operation}":
                    run.printed.append("\n")
                    # The rest of this page and every later log page are never fetched.
                    show_deployment_events(server, run)
                    return
            else:
                run.printed.append(line.get("line") or "")
        next_token = logs.get("nextToken") or ""
        if next_token == "":
            break
        assert time.monotonic() < deadline, f"logs still had a nextToken after {DEADLINE}s"
        if next_token == token:
            time.sleep(0.5)  # only when unchanged
        token = next_token
    # The stream ended without the engine header: the final status decides.
    status, dep, _ = cli(server, "GET", f"{run.stack}/deployments/{run.deployment_id}")
    require_ok(status, dep, "GET deployment")
    check_deployment(dep, "GET deployment")
    if dep["status"] == "failed":
        run.error = "deployment failed"


def show_deployment_events(server, run):
    """backend.go:showDeploymentEvents (§2.6): find the update, then page its engine events."""
    updates_path = f"{run.stack}/deployments/{run.deployment_id}/updates"
    for _ in range(10):
        status, updates, _ = cli(server, "GET", updates_path)
        require_ok(status, updates, "GET deployment updates")
        assert isinstance(updates, list), f"updates must be a JSON array: {updates!r}"
        if updates:
            break
        time.sleep(0.5)
    else:
        run.error = f"could not find update associated with deployment {run.deployment_id}"
        return
    first = updates[0]  # only element 0 is used
    assert isinstance(first.get("updateID"), str) and first["updateID"], first
    assert type(first.get("version")) is int, first
    run.update = first
    # getUpdatePath hard-codes the `update` segment, whatever the kind.
    events_path = f"{run.stack}/update/{first['updateID']}/events"
    token = None
    deadline = time.monotonic() + DEADLINE
    while True:
        query = go_query({"continuationToken": token}) if token is not None else None
        status, resp, _ = cli(server, "GET", events_path, query=query)
        require_ok(status, resp, "GET update events")
        assert isinstance(resp, dict), resp
        events = resp.get("events") or []
        assert isinstance(events, list), resp
        for ev in events:
            kind, payload = check_engine_event(ev)
            run.events.append(ev)
            if kind in ("diagnosticEvent", "stdoutEvent"):
                run.printed.append(payload["message"])
            elif kind == "errorEvent":
                run.printed.append(payload["error"])
            elif kind == "summaryEvent":
                run.summary = payload  # remembered
        token = resp.get("continuationToken")
        if token is None:  # absent or null: done
            break
        assert time.monotonic() < deadline, f"events still had a continuationToken after {DEADLINE}s"
        time.sleep(0.5)  # always, even when events came
    result = (run.summary or {}).get("result")
    if result == "failed":
        run.error = "deployment failed"
    elif result == "canceled":
        run.error = "canceled"


def deployment_get(server, stack, ref):
    """`pulumi deployment get <uuid|version|#version>` (§2.8)."""
    if re.fullmatch(r"#?[0-9]+", ref):
        path = f"{stack}/deployments/version/{ref.lstrip('#')}"
    else:
        path = f"{stack}/deployments/{ref}"
    status, dep, _ = cli(server, "GET", path)
    require_ok(status, dep, f"GET {path}")
    check_deployment(dep, f"GET {path}")
    return dep


def deployment_list(server, stack, count=10, page_size=10, asc=False, sort=None):
    """`pulumi deployment list` (§2.7, §2.8): pages until it has `count` items, or all `total`, or
    an empty page. `asc=true` only with --asc. Returns (deployments, queries sent)."""
    found, queries, page = [], [], 1
    while True:
        params = {"page": page, "pageSize": page_size}
        if sort:
            params["sort"] = sort
        if asc:
            params["asc"] = "true"
        query = go_query(params)
        queries.append(query)
        status, body, _ = cli(server, "GET", f"{stack}/deployments", query=query)
        require_ok(status, body, "GET deployments")
        items = body.get("deployments") or []
        assert type(body.get("total")) is int and type(body.get("itemsPerPage")) is int, body
        for d in items:
            check_deployment(d, "list item")
        found.extend(items)
        if not items or len(found) >= count or len(found) >= body["total"]:
            return found[:count], queries
        page += 1
        assert page < 100, "deployment list did not end"


def test_request_bodies_are_the_clis(repo):
    """The builder above produces the CLI's bodies of §2.4 byte for byte (Go field order,
    compact JSON), so every replay below sends exactly what the CLI sends."""
    minimal = ('{"operation":"update","inheritSettings":true,"executorContext":{"workingDirectory":""},'
               '"operationContext":{"preRunCommands":[],"operation":"","environmentVariables":{}},'
               '"agentPoolID":null}')
    assert json.dumps(deployment_body("update", inherit=True), separators=(",", ":")) == minimal
    remote = ('{"operation":"update","inheritSettings":false,'
              '"executorContext":{"workingDirectory":""},'
              '"sourceContext":{"git":{"repoUrl":"REPO","branch":"refs/heads/main","repoDir":"infra"}},'
              '"operationContext":{"preRunCommands":["echo hi"],"operation":"",'
              '"environmentVariables":{"A":"1","B":{"secret":"2"}}},'
              '"agentPoolID":null}').replace("REPO", repo)
    body = deployment_body("update", inherit=False, url=repo, branch="refs/heads/main",
                           repo_dir="infra", env={"A": "1"}, secret_env={"B": "2"},
                           pre_run=["echo hi"])
    assert json.dumps(body, separators=(",", ":")) == remote


# --- fixtures: module-wide state ---------------------------------------------------------------


@pytest.fixture(scope="module")
def run_settings(server, repo):
    """Stack `run` with saved settings: a pre-run command whose computed output proves it ran, an
    engine variable, and a secret. Returns the settings as read back."""
    stack = new_stack(server, "run")
    return edit_settings(server, stack, {
        "sourceContext": {"git": {"repoUrl": repo, "branch": "refs/heads/main", "repoDir": "infra"}},
        "operationContext": {
            "preRunCommands": ["echo PRE-$((40 + 2))"],
            "environmentVariables": {"TF_VAR_v": "from-settings", "KEEP": {"secret": "keep-me"}},
        },
    })


@pytest.fixture(scope="module")
def run_update(server, run_settings):
    """`pulumi deployment run update --stack default/cli/run --suppress-stream-logs=false`."""
    stack = require_stack(server, ORG, PROJECT, "run")
    return run_deployment(server, stack, "update", deployment_body("update", inherit=True))


@pytest.fixture(scope="module")
def run_preview(server, run_update):
    """`pulumi deployment run preview` with the default --suppress-stream-logs=true, after the
    update; waited for by the test (the CLI itself exits at once)."""
    stack = require_stack(server, ORG, PROJECT, "run")
    run = run_deployment(server, stack, "preview", deployment_body("preview", inherit=True), stream=False)
    wait_deployment(server, stack, run.deployment_id)
    return run


@pytest.fixture(scope="module")
def remote_up(server, repo):
    """Automation API's RemoteStack.Up: UpsertStack created the stack, then `pulumi up --remote
    <url> --remote-git-branch refs/heads/main --remote-git-repo-dir infra --remote-env A=1
    --remote-env-secret B=2 --remote-pre-run-command "echo hi"` (no GetStack before the POST)."""
    stack = new_stack(server, "remote")
    body = deployment_body(
        "update", inherit=False, url=repo, branch="refs/heads/main", repo_dir="infra",
        env={"A": "1"}, secret_env={"B": "2"}, pre_run=["echo hi"],
    )
    return run_deployment(server, stack, "update", body)


@pytest.fixture(scope="module")
def auto_stack(server):
    """Automation API's UpsertStack on a new stack (§3.2): SelectStack fails with 404, NewStack
    creates it. Returns the answers, for the test to check."""
    stack = stack_path(ORG, PROJECT, "auto")
    answers = {}
    # SelectStack: `pulumi stack --stack default/cli/auto` -> GetStack.
    answers["select"] = get_stack(server, ORG, PROJECT, "auto")
    # NewStack: `pulumi stack init default/cli/auto --no-select` -> CreateStack.
    answers["create"] = create_stack(server, PROJECT, "auto")
    # A second NewStack of the same name.
    answers["create_again"] = create_stack(server, PROJECT, "auto")
    # A later UpsertStack: SelectStack finds it: GetStack, export for the snapshot, GetStack again.
    answers["reselect"] = get_stack(server, ORG, PROJECT, "auto")
    answers["export"] = cli(server, "GET", f"{stack}/export")
    return answers


# --- §2.1 bootstrap ----------------------------------------------------------------------------


def test_bootstrap_current_user(server):
    # backend.go:Login / detectUserInfo -> client.go:GetPulumiAccountDetails.
    status, user, _ = cli(server, "GET", "/api/user")
    assert status == 200, user
    assert isinstance(user.get("githubLogin"), str) and user["githubLogin"], (
        f"unexpected response from server: {user!r}")
    orgs = user.get("organizations") or []
    assert all(isinstance(o.get("githubLogin"), str) and o["githubLogin"] for o in orgs), user
    assert ORG in [o["githubLogin"] for o in orgs], user
    # Without a token: 401, decoded as "Unauthorized: No credentials provided or are invalid."
    status, body, _ = call(server, "GET", "/api/user", headers=CLI_HEADERS, auth=False)
    assert_error_body(status, body, 401, "GET /api/user without a token")


def test_bootstrap_capabilities(server):
    # backend.go:New -> detectCapabilities -> client.go:GetCapabilities. 404 = none.
    status, body, _ = cli(server, "GET", "/api/capabilities")
    assert status in (200, 404), f"{status} {body!r}"
    if status == 404:
        assert_error_body(status, body, 404, "GET /api/capabilities")
        return
    caps = body.get("capabilities")
    assert isinstance(caps, list), body
    for cap in caps:
        assert isinstance(cap.get("capability"), str) and cap["capability"], cap
        assert "version" not in cap or type(cap["version"]) is int, cap
        if cap["capability"] == "api-version":  # validated by the CLI
            conf = cap.get("configuration") or {}
            assert conf.get("minVersion") <= conf.get("defaultVersion") <= conf.get("maxVersion"), cap


def test_bootstrap_default_org(server):
    # backend.go:New -> client.go:GetDefaultOrg. 200 or 404; anything else breaks stack names.
    status, body, _ = cli(server, "GET", "/api/user/organizations/default")
    assert status in (200, 404), f"only 200 or 404 are acceptable, got {status} {body!r}"
    if status == 404:
        assert_error_body(status, body, 404, "GET default org")
        return
    # The Go struct has no json tags: the key matches case-insensitively.
    login = next((v for k, v in body.items() if k.lower() == "githublogin"), None)
    assert isinstance(login, str) and login, body
    assert login == ORG, body


# --- §2.2, §2.4-§2.6: `pulumi deployment run update --suppress-stream-logs=false` -------------


def test_deployment_run_update_streams_engine_events(server, run_update):
    run = run_update
    assert run.error is None, f"the CLI would fail: {run.error}\n{run.text}"
    assert run.console_url, "View Live needs a consoleUrl"
    headers = [l["header"] for l in run.log_lines if l.get("header")]
    assert headers and headers[-1] == "pulumi update", headers
    assert run.update is not None, "the events phase never started"
    assert len(run.summaries) == 1, run.summaries
    summary = run.summaries[0]
    assert summary["result"] == "succeeded", summary
    assert summary["isPreview"] is False, summary
    assert summary.get("resourceChanges", {}).get("create") == 1, summary
    # The engine's own output reached the CLI through the events.
    assert "Apply complete" in run.text, run.text
    # The initiator header was recorded; job and step times decode (`pulumi deployment get`).
    dep = deployment_get(server, run.stack, run.deployment_id)
    assert dep["status"] == "succeeded", dep
    assert dep.get("initiator") == "automation-api", dep
    # Engine events are the stack's own: another stack's path does not serve them.
    other = new_stack(server, "other")
    status, body, _ = cli(server, "GET", f"{other}/update/{run.update['updateID']}/events")
    assert_error_body(status, body, 404, "events of another stack's update")


def test_deployment_run_inheriting_keeps_saved_settings(server, run_settings, run_update):
    run = run_update
    assert run.error is None, run.text
    # The saved pre-run command ran (its computed output) and the saved variable reached Terraform,
    # although the request carried `preRunCommands: []` and `environmentVariables: {}`.
    assert "PRE-42\n" in run.text, run.text
    assert stack_outputs(server, run.stack).get("val") == "from-settings"
    status, after, _ = cli(server, "GET", f"{run.stack}/deployments/settings")
    assert status == 200, after
    before_ctx, after_ctx = run_settings["operationContext"], after["operationContext"]
    assert after_ctx.get("preRunCommands") == before_ctx["preRunCommands"] == ["echo PRE-$((40 + 2))"]
    assert after_ctx.get("environmentVariables") == before_ctx["environmentVariables"]
    assert set(after_ctx["environmentVariables"]) == {"TF_VAR_v", "KEEP"}
    assert after["sourceContext"] == run_settings["sourceContext"]


def test_deployment_run_of_failing_program_fails(server, failing_repo):
    # `pulumi deployment run update <url> --git-branch refs/heads/main --git-repo-dir infra
    #  --suppress-stream-logs=false` on an existing stack.
    new_stack(server, "fail")
    stack = require_stack(server, ORG, PROJECT, "fail")
    body = deployment_body("update", inherit=True, url=failing_repo, branch="refs/heads/main",
                           repo_dir="infra")
    run = run_deployment(server, stack, "update", body)
    assert run.update is not None, f"{run.error}\n{run.text}"
    assert [s["result"] for s in run.summaries] == ["failed"], run.summaries
    assert run.error == "deployment failed", "the CLI would exit 0 for a failed deployment"
    assert "precondition failed" in run.text.lower(), run.text
    assert deployment_get(server, stack, run.deployment_id)["status"] == "failed"


# --- §2.3 + §3.3: `pulumi up --remote` and what Automation API reads after it ----------------


def test_up_remote_then_outputs_and_history(server, remote_up):
    run = remote_up
    assert run.error is None, f"the CLI would fail: {run.error}\n{run.text}"
    assert any(l.get("line") == "hi\n" for l in run.log_lines), "the pre-run command's output"
    assert [s["result"] for s in run.summaries] == ["succeeded"], run.summaries
    assert "Apply complete" in run.text, run.text
    stack = run.stack

    # StackOutputs: `pulumi stack output --json [--show-secrets]`: GetStack, then export (twice).
    for _ in range(2):
        status, body, _ = cli(server, "GET", stack)
        assert status == 200, body
        status, export, _ = cli(server, "GET", f"{stack}/export")
        assert status == 200, export
        assert type(export.get("version")) is int and 1 <= export["version"] <= 3, export
        assert isinstance(export.get("deployment"), dict), export
        resources = export["deployment"].get("resources") or []
        root = [r for r in resources if r.get("type") == "pulumi:pulumi:Stack"]
        assert len(root) == 1, resources
        assert root[0].get("outputs", {}).get("val") == "one", root

    # History(1, 1): `pulumi stack history --json --page-size 1 --page 1`.
    status, body, _ = cli(server, "GET", stack)
    assert status == 200, body
    status, history, _ = cli(server, "GET", f"{stack}/updates", query="pageSize=1&page=1")
    assert status == 200, history
    updates = history.get("updates")
    assert isinstance(updates, list) and len(updates) == 1, history
    latest = updates[0]
    assert "info" not in latest, f"the CLI needs the legacy flat shape: {latest!r}"
    assert latest.get("kind") == "update", latest
    assert latest.get("result") == "succeeded", latest
    assert type(latest.get("version")) is int and latest["version"] >= 1, latest
    assert latest["version"] == run.update["version"], (latest, run.update)
    for key in ("startTime", "endTime"):
        assert type(latest.get(key)) is int, latest
    assert isinstance(latest.get("environment") or {}, dict), latest
    config = latest.get("config") or {}
    assert isinstance(config, dict) and all(":" in k for k in config), latest


# --- §3.2, §3.3: UpsertStack on a new stack, RemoteStack.Preview --------------------------------


def test_upsert_stack_creates_a_new_stack(auto_stack):
    status, body, _ = auto_stack["select"]
    # Must be 404 with code 404, or the CLI does not print "no stack named ... found" and
    # UpsertStack never creates the stack.
    assert_error_body(status, body, 404, "GET of a stack that does not exist")
    status, body, _ = auto_stack["create"]
    assert status == 200, body
    status, body, _ = auto_stack["create_again"]
    assert_error_body(status, body, 409, "a second create")
    # client.go maps a 409 saying "already exists" to StackAlreadyExistsError, which Automation
    # API recognises with this regexp.
    assert "already exists" in body["message"], body
    assert re.search(r"stack.*already exists", body["message"]), body
    status, body, _ = auto_stack["reselect"]
    assert status == 200, body
    assert (body["orgName"], body["projectName"], body["stackName"]) == (ORG, PROJECT, "auto")
    status, export, _ = auto_stack["export"]
    assert status == 200, f"SelectStack reads the snapshot of a never-updated stack: {status} {export!r}"
    assert type(export.get("version")) is int and 1 <= export["version"] <= 3, export
    assert isinstance(export.get("deployment"), dict), export


def test_remote_preview_has_exactly_one_preview_summary(server, repo, auto_stack):
    assert auto_stack["create"][0] == 200
    # RemoteStack.Preview: `pulumi preview --remote <url> --remote-git-branch=refs/heads/main
    # --remote-git-repo-dir=infra --event-log <file> --stack default/cli/auto`.
    stack = stack_path(ORG, PROJECT, "auto")
    body = deployment_body("preview", inherit=False, url=repo, branch="refs/heads/main",
                           repo_dir="infra")
    run = run_deployment(server, stack, "preview", body)
    assert run.error is None, f"the CLI would fail: {run.error}\n{run.text}"
    # The event log gets events only on the events path; Automation API needs exactly one summary
    # ("failed to get preview summary" / "got multiple preview summaries").
    assert run.update is not None, "no `pulumi preview` header: the event log would be empty"
    assert len(run.summaries) == 1, run.summaries
    assert run.summaries[0]["isPreview"] is True, run.summaries
    assert run.summaries[0]["result"] == "succeeded", run.summaries


# --- §2.8: deployment list / get / log / cancel --------------------------------------------------


def test_deployment_run_default_exits_after_create(run_preview):
    assert run_preview.error is None
    assert run_preview.printed == [
        "Preparing deployment...\n", f"View Live: {run_preview.console_url}\n"]
    assert run_preview.console_url


def test_deployment_list(server, run_update, run_preview):
    stack = run_update.stack
    listed, queries = deployment_list(server, stack)
    assert queries == ["page=1&pageSize=10"]
    assert [d["id"] for d in listed] == [run_preview.deployment_id, run_update.deployment_id]
    assert [d["version"] for d in listed] == [2, 1]
    assert [d["status"] for d in listed] == ["succeeded", "succeeded"]
    listed, queries = deployment_list(server, stack, asc=True)
    assert queries == ["asc=true&page=1&pageSize=10"]
    assert [d["version"] for d in listed] == [1, 2]
    # One per page: the CLI pages on until it holds `total`.
    listed, queries = deployment_list(server, stack, page_size=1)
    assert queries == ["page=1&pageSize=1", "page=2&pageSize=1"], queries
    assert [d["version"] for d in listed] == [2, 1]


def test_deployment_get_by_id_and_version(server, run_update, run_preview):
    stack = run_update.stack
    by_id = deployment_get(server, stack, run_update.deployment_id)
    assert by_id["id"] == run_update.deployment_id and by_id["version"] == 1
    assert by_id["pulumiOperation"] == "update"
    by_hash = deployment_get(server, stack, "#1")
    assert by_hash["id"] == run_update.deployment_id
    by_number = deployment_get(server, stack, "2")
    assert by_number["id"] == run_preview.deployment_id
    assert by_number["pulumiOperation"] == "preview"


def test_deployment_log(server, run_update):
    stack = run_update.stack
    # `pulumi deployment log '#1' --job 0 --step N --count 50`: the version is resolved first.
    dep = deployment_get(server, stack, "#1")
    names = [s["name"] for s in dep["jobs"][0]["steps"]]
    assert "pulumi update" in names, names
    step = names.index("pulumi update")
    logs_path = f"{stack}/deployments/{dep['id']}/logs"
    # Keys in url.Values order (continuationToken, count, job, offset, step); offset only if > 0.
    query = go_query({"job": 0, "step": step, "count": 50})
    assert query == f"count=50&job=0&step={step}"
    status, first, _ = cli(server, "GET", logs_path, query=query)
    require_ok(status, first, "GET step logs")
    lines = first.get("lines") or []
    for line in lines:
        check_log_line(line, "step logs")
    assert 0 < len(lines) <= 50, first
    text = "".join(l.get("line") or "" for l in lines)
    assert lines[0].get("line", "").startswith("$ terraform "), lines[0]
    assert "terraform apply" in text, text
    # `--offset 1`: the same lines, one further on.
    query = go_query({"job": 0, "step": step, "offset": 1, "count": 50})
    assert query == f"count=50&job=0&offset=1&step={step}"
    status, shifted, _ = cli(server, "GET", logs_path, query=query)
    require_ok(status, shifted, "GET step logs at offset 1")
    later = [l.get("line") for l in shifted.get("lines") or []]
    assert later[:len(lines) - 1] == [l.get("line") for l in lines[1:]], (lines, later)
    # `--all`: follow nextToken until it is empty.
    token, seen = "", []
    for _ in range(1000):
        status, page, _ = cli(server, "GET", logs_path,
                              query=go_query({"continuationToken": token}) if token else None)
        require_ok(status, page, "GET logs --all")
        for line in page.get("lines") or []:
            check_log_line(line, "logs --all")
        seen.extend(page.get("lines") or [])
        token = page.get("nextToken") or ""
        if not token:
            break
    else:
        pytest.fail("the logs of a finished deployment never ended")
    headers = [l["header"] for l in seen if l.get("header")]
    assert "pulumi update" in headers, headers
    assert "PRE-42\n" in [l.get("line") for l in seen]


def test_deployment_cancel_of_a_running_deployment(server, slow_repo):
    # `pulumi deployment run update <url> --git-branch refs/heads/main --git-repo-dir infra`
    # (streaming suppressed by default), then `pulumi deployment cancel <id>`.
    new_stack(server, "slow")
    stack = require_stack(server, ORG, PROJECT, "slow")
    body = deployment_body("update", inherit=True, url=slow_repo, branch="refs/heads/main",
                           repo_dir="infra")
    run = run_deployment(server, stack, "update", body, stream=False)

    def in_engine_step():  # test-side: wait until Terraform is at work
        _, dep, _ = setup(server, "GET", f"{stack}/deployments/{run.deployment_id}")
        steps = (dep.get("jobs") or [{}])[0].get("steps") or []
        return any(s["name"] == "pulumi update" and s["status"] == "running" for s in steps)
    wait_for(in_engine_step, "the engine step to run")
    time.sleep(1)

    # client.go:CancelStackDeployment: POST with no body; any 2xx.
    status, body, _ = cli(server, "POST", f"{stack}/deployments/{run.deployment_id}/cancel")
    require_ok(status, body, "POST cancel")
    dep = wait_deployment(server, stack, run.deployment_id)
    assert dep["status"] == "failed", dep
    check_deployment(deployment_get(server, stack, run.deployment_id), "cancelled deployment")


# --- §2.9: `pulumi stack tag set|rm`, `pulumi stack rm` ----------------------------------------


def stack_tags(server, stack):
    status, body, _ = cli(server, "GET", stack)
    assert status == 200, body
    tags = body.get("tags") or {}
    assert isinstance(tags, dict), body
    return tags


def patch_tags(server, stack, tags):
    """client.go:UpdateStackTags after ValidateStackTags: the whole map replaces the tags."""
    for name, value in tags.items():
        assert re.fullmatch(r"[a-zA-Z0-9-_.:]{1,40}", name) and len(value.encode()) <= 256
    status, body, _ = cli(server, "PATCH", f"{stack}/tags", tags)
    assert status == 204, f"PATCH tags: {status} {body!r}"


def test_stack_tag_set_and_rm(server):
    stack = new_stack(server, "tags")
    original = stack_tags(server, stack)
    # `pulumi stack tag set owner me`, `pulumi stack tag set env dev`: read the tags, add, PATCH.
    for name, value in (("owner", "me"), ("env", "dev")):
        tags = stack_tags(server, stack)
        tags[name] = value
        patch_tags(server, stack, tags)
    assert stack_tags(server, stack) == {**original, "owner": "me", "env": "dev"}
    # `pulumi stack tag rm owner`.
    tags = stack_tags(server, stack)
    del tags["owner"]
    patch_tags(server, stack, tags)
    assert stack_tags(server, stack) == {**original, "env": "dev"}


def test_stack_rm(server, remote_up):
    stack = remote_up.stack
    assert remote_up.error is None, remote_up.text
    # `pulumi stack rm` (no --force) on a stack with resources: the CLI recognises this message.
    status, body, _ = cli(server, "DELETE", stack, query="force=false")
    assert_error_body(status, body, 400, "DELETE stack with resources, force=false")
    assert body["message"] == "Bad Request: Stack still contains resources.", body
    # `pulumi stack rm --force`.
    status, body, _ = cli(server, "DELETE", stack, query="force=true")
    assert status == 204, f"{status} {body!r}"
    status, body, _ = get_stack(server, ORG, PROJECT, "remote")
    assert_error_body(status, body, 404, "GET of a removed stack")
