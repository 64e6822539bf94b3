"""Stacks, stack tags, updates, engine events, the caller and webhooks, driven only through the
official Python `pulumi-cloud-sdk`'s generated API classes (StacksApi, DeploymentsApi,
OrganizationsApi, UsersApi, MiscellaneousApi), so every response must deserialize with the SDK's
strict models, and checks what comes back.

Errors: this SDK has no `ApiException`. Its `ApiClient` performs requests with
`urllib.request.urlopen`, so a non-2xx answer surfaces as `urllib.error.HTTPError`, carrying the
status (`.code`) and the body (`.read()`); `expect_error` checks both.

One server per module (see conftest.py). Three deployments run in this file: one update on the
main stack `default/stk/main` (shared, read-only, by the update/events/export/history tests), one
update on a stack that is then force-deleted, and one slow update that is cancelled while it holds
its stack. Every test that changes state uses a stack (or a project) of its own.
"""

import calendar
import datetime
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pulumi_cloud_sdk import ApiClient, Configuration
from pulumi_cloud_sdk.apis.miscellaneous_api_ import MiscellaneousApi
from pulumi_cloud_sdk.apis.organizations_api_ import OrganizationsApi
from pulumi_cloud_sdk.apis.stacks_api_ import StacksApi
from pulumi_cloud_sdk.apis.users_api_ import UsersApi
from pulumi_cloud_sdk.models import (
    AppAPICapabilityConfig,
    AppCapabilitiesResponse,
    AppCreateStackRequest,
    AppCreateStackResponse,
    AppGetDefaultOrganizationResponse,
    AppListStacksResponse,
    AppStack,
    AppStackSummary,
    AppStackTagName,
    AppUntypedDeployment,
    AppUpdateKind,
    AppUpdateResult,
    CreateDeploymentRequest,
    DeploymentSettingsRequest,
    JobStatus,
    OperationContextRequest,
    PulumiOperation,
    SourceContextGitRequest,
    SourceContextRequest,
    StackTag,
    UpdateInfo,
    User,
    Webhook,
    WebhookDelivery,
    WebhookResponse,
)

ORG = "default"  # the org every fresh Tarmac data dir has
PROJECT = "stk"
MAIN = "main"  # the stack of the shared update deployment
TTL_MINUTES = 43200  # 30 days: armed by the main stack's `ttl` tag, never fires during the tests
TERMINAL = {"succeeded", "failed", "skipped"}
DEADLINE = 60.0


# --- helpers -----------------------------------------------------------------------------------


def settings_request(repo_url):
    """Settings deploying infra/ from the test repo's main branch (no environment variables)."""
    return DeploymentSettingsRequest(
        source_context=SourceContextRequest(
            git=SourceContextGitRequest(repo_url=repo_url, branch="refs/heads/main", repo_dir="infra")
        ),
        operation_context=OperationContextRequest(),
    )


def wait_status(api, stack, dep_id, statuses, timeout=DEADLINE):
    """Polls get_deployment until the deployment's status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        d = api.get_deployment(ORG, PROJECT, stack, dep_id)
        if str(d.status) in statuses:
            return d
        assert time.monotonic() < deadline, f"deployment {dep_id} still {d.status} after {timeout}s"
        time.sleep(0.2)


def wait_terminal(api, stack, dep_id):
    return wait_status(api, stack, dep_id, TERMINAL)


def deploy_update(api, stack, repo_url):
    """Saves settings on `stack`, runs one update deployment to the end (60 s deadline) and
    returns (create response, finished deployment, unix second before, unix second after)."""
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo_url))
    before = int(time.time())
    created = api.create_api_deployment_handler_v2(
        ORG, PROJECT, stack,
        CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True),
    )
    done = wait_terminal(api, stack, created.id)
    after = int(time.time()) + 1
    assert done.status == JobStatus.Succeeded, f"deployment on {stack} ended {done.status}"
    return created, done, before, after


def expect_error(status, call, *args, **kwargs):
    """Calls an SDK method that must fail with HTTP `status`; returns the JSON error body
    ({} for a body-less answer, e.g. to HEAD), whose `code` must equal the status."""
    with pytest.raises(urllib.error.HTTPError) as e:
        call(*args, **kwargs)
    assert e.value.code == status, f"expected {status}, got {e.value.code}"
    raw = e.value.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        pytest.fail(f"error body is not JSON: {raw!r}")
    assert body.get("code") == status, body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def parse_pulumi_time(text):
    """Unix seconds of a "YYYY-MM-DD hh:mm:ss.fff" (UTC) time, as Pulumi's service writes them."""
    t = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")
    return calendar.timegm(t.timetuple())


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server):
    """An ApiClient bound to the test server (without it, the SDK talks to api.pulumi.com)."""
    cfg = Configuration()
    cfg.host = server.url
    cfg.access_token = server.token
    return ApiClient(cfg)


@pytest.fixture(scope="module")
def stacks(client):
    return StacksApi(client)


@pytest.fixture(scope="module")
def orgs(client):
    return OrganizationsApi(client)


@pytest.fixture(scope="module")
def users(client):
    return UsersApi(client)


@pytest.fixture(scope="module")
def misc(client):
    return MiscellaneousApi(client)


@dataclass
class Deployed:
    id: str
    version: int
    before: int  # unix seconds, just before the deployment was created
    after: int  # unix seconds, just after it was seen finished


@pytest.fixture(scope="module")
def deployed(orgs, api, repo):
    """The main stack, created with tags, then one succeeded update deployment on it."""
    orgs.create_stack(
        ORG, PROJECT,
        AppCreateStackRequest(stack_name=MAIN, tags={"team": "blue", "ttl": str(TTL_MINUTES)}),
    )
    created, _, before, after = deploy_update(api, MAIN, repo)
    return Deployed(id=created.id, version=created.version, before=before, after=after)


@dataclass
class Received:
    path: str
    headers: object  # http.client.HTTPMessage
    body: bytes


class Receiver:
    """A local HTTP endpoint for webhook deliveries: records every POST, answers 200 "ok"."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with receiver.lock:
                    # self.headers (an http.client.HTTPMessage) looks names up case-insensitively.
                    receiver.requests.append(Received(self.path, self.headers, body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def on(self, path, count, timeout=10.0):
        """The requests received on `path`, once there are at least `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [r for r in self.requests if r.path == path]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.httpd.shutdown()


# --- stacks ------------------------------------------------------------------------------------


def test_create_stack_then_get_and_conflict(orgs, stacks):
    project = "stk-create"
    resp = orgs.create_stack(
        ORG, project, AppCreateStackRequest(stack_name="fresh", tags={"team": "red"})
    )
    assert isinstance(resp, AppCreateStackResponse)

    got = stacks.get_stack(ORG, project, "fresh")
    assert isinstance(got, AppStack)
    assert (got.org_name, got.project_name, got.stack_name) == (ORG, project, "fresh")
    assert got.id
    assert got.tags == {"team": "red"}
    assert got.version == 0  # no update yet
    assert got.active_update == ""

    body = expect_error(
        409, orgs.create_stack, ORG, project, AppCreateStackRequest(stack_name="fresh")
    )
    assert "already exists" in body["message"], body
    # The refused create changed nothing.
    assert stacks.get_stack(ORG, project, "fresh").tags == {"team": "red"}


def test_get_missing_stack_is_404(stacks):
    expect_error(404, stacks.get_stack, ORG, PROJECT, "no-such-stack")


def test_project_exists(orgs):
    project = "stk-exists"
    orgs.create_stack(ORG, project, AppCreateStackRequest(stack_name="s"))
    # HEAD: an existing project answers 200 with no body, so the SDK returns without raising.
    assert orgs.project_exists(ORG, project) is None
    expect_error(404, orgs.project_exists, ORG, "stk-no-such-project")


def test_delete_empty_stack_without_force(orgs, stacks):
    project = "stk-delete"
    orgs.create_stack(ORG, project, AppCreateStackRequest(stack_name="gone"))
    stacks.delete_stack(ORG, project, "gone")
    expect_error(404, stacks.get_stack, ORG, project, "gone")
    expect_error(404, stacks.delete_stack, ORG, project, "gone")
    # Its project has no stack any more.
    expect_error(404, orgs.project_exists, ORG, project)


def test_delete_stack_with_resources_refuses_without_force(stacks, deployed):
    for force in (None, False):
        body = expect_error(400, stacks.delete_stack, ORG, PROJECT, MAIN, force=force)
        assert "Stack still contains resources" in body["message"], body
    # The refusal left the stack in place.
    assert stacks.get_stack(ORG, PROJECT, MAIN).version == deployed.version


def test_delete_stack_with_resources_force(api, stacks, users, repo):
    stack = "doomed"
    deploy_update(api, stack, repo)
    expect_error(400, stacks.delete_stack, ORG, PROJECT, stack)
    assert stacks.get_stack(ORG, PROJECT, stack).version == 1

    stacks.delete_stack(ORG, PROJECT, stack, force=True)
    expect_error(404, stacks.get_stack, ORG, PROJECT, stack)
    listed = users.list_user_stacks(organization=ORG, project=PROJECT)
    assert stack not in {s.stack_name for s in listed.stacks}


def test_delete_stack_during_deployment_conflicts(api, stacks, slow_repo):
    stack = "busy"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(slow_repo))
    dep = api.create_api_deployment_handler_v2(
        ORG, PROJECT, stack,
        CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True),
    )
    wait_status(api, stack, dep.id, {"running"})
    try:
        # The running deployment holds the stack: its update is the stack's active one.
        assert stacks.get_stack(ORG, PROJECT, stack).active_update == dep.id
        for force in (None, True):
            expect_error(409, stacks.delete_stack, ORG, PROJECT, stack, force=force)
        assert stacks.get_stack(ORG, PROJECT, stack).stack_name == stack
    finally:
        api.cancel_deployment(ORG, PROJECT, stack, dep.id)
        wait_terminal(api, stack, dep.id)
    assert stacks.get_stack(ORG, PROJECT, stack).active_update == ""
    stacks.delete_stack(ORG, PROJECT, stack, force=True)
    expect_error(404, stacks.get_stack, ORG, PROJECT, stack)


# --- stack tags --------------------------------------------------------------------------------


def test_stack_tags(orgs, stacks):
    project, stack = "stk-tags", "tagged"
    orgs.create_stack(ORG, project, AppCreateStackRequest(stack_name=stack, tags={"a": "1"}))

    def tags():
        return stacks.get_stack(ORG, project, stack).tags

    # The SDK annotates StackTag.name as AppStackTagName, the enum of the 8 built-in names, but
    # neither the model's setter nor the serializer checks it: a plain string goes out as is. So
    # custom names (what users add) pass through the model; a built-in name is sent as the enum.
    stacks.add_stack_tag(ORG, project, stack, StackTag(name="owner", value="alice"))
    stacks.add_stack_tag(
        ORG, project, stack, StackTag(name=AppStackTagName.VCSOwnerNameTag, value="acme")
    )
    assert tags() == {"a": "1", "owner": "alice", "vcs:owner": "acme"}

    # Adding an existing tag, or an invalid name or value, is refused and changes nothing.
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="owner", value="bob"))
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="bad name!", value="x"))
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="n" * 41, value="x"))
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="big", value="x" * 257))
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="ttl", value="soon"))
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="ttl", value="0"))
    assert tags() == {"a": "1", "owner": "alice", "vcs:owner": "acme"}
    stacks.add_stack_tag(ORG, project, stack, StackTag(name="n" * 40, value="y" * 256))
    assert tags()["n" * 40] == "y" * 256

    # Update one tag.
    stacks.update_stack_tag(ORG, project, stack, "owner", StackTag(name="owner", value="bob"))
    assert tags()["owner"] == "bob"
    expect_error(
        404, stacks.update_stack_tag, ORG, project, stack, "missing", StackTag(name="missing", value="v")
    )
    expect_error(
        400, stacks.update_stack_tag, ORG, project, stack, "owner", StackTag(name="owner", value="z" * 257)
    )
    assert tags()["owner"] == "bob"

    # Delete one tag.
    stacks.delete_stack_tag(ORG, project, stack, "owner")
    assert "owner" not in tags()
    expect_error(404, stacks.delete_stack_tag, ORG, project, stack, "owner")

    # Replace the whole map.
    stacks.update_stack_tags(ORG, project, stack, {"x": "1", "y": "2"})
    assert tags() == {"x": "1", "y": "2"}
    expect_error(400, stacks.update_stack_tags, ORG, project, stack, {"bad name": "1"})
    assert tags() == {"x": "1", "y": "2"}

    # Tags of a stack that does not exist.
    expect_error(404, stacks.add_stack_tag, ORG, project, "nope", StackTag(name="a", value="b"))
    expect_error(404, stacks.update_stack_tags, ORG, project, "nope", {"a": "b"})


def test_ttl_tag_bounds(orgs, stacks):
    """The contract: `ttl` is a whole number of minutes, 1..525600."""
    project, stack = "stk-ttl", "bounds"
    orgs.create_stack(ORG, project, AppCreateStackRequest(stack_name=stack))
    stacks.add_stack_tag(ORG, project, stack, StackTag(name="ttl", value="525600"))
    assert stacks.get_stack(ORG, project, stack).tags == {"ttl": "525600"}
    stacks.delete_stack_tag(ORG, project, stack, "ttl")
    expect_error(400, stacks.add_stack_tag, ORG, project, stack, StackTag(name="ttl", value="525601"))
    assert stacks.get_stack(ORG, project, stack).tags == {}


def test_ttl_tag_arms_destroy_schedule(api, deployed):
    """The main stack's `ttl` tag arms a destroy TTL_MINUTES after its successful update."""
    listed = api.list_scheduled_deployment(ORG, PROJECT, MAIN)
    ttl = [s for s in listed.schedules if s.definition["request"]["operation"] == "destroy"]
    assert len(ttl) == 1, listed.schedules
    when = parse_pulumi_time(ttl[0].schedule_once)
    assert deployed.before + TTL_MINUTES * 60 - 1 <= when <= deployed.after + TTL_MINUTES * 60 + 1, (
        ttl[0].schedule_once, deployed)


# --- updates -----------------------------------------------------------------------------------


def check_update_info(u, deployed):
    assert isinstance(u, UpdateInfo)
    assert u.update_id == deployed.id
    assert u.version == 1
    assert u.latest_version >= u.version
    assert u.requested_by is not None and u.requested_by.github_login
    info = u.info
    assert info.kind == AppUpdateKind.Update
    assert info.result == AppUpdateResult.Succeeded
    assert info.version == u.version
    assert deployed.before <= info.start_time <= info.end_time <= deployed.after, (info, deployed)
    assert info.resource_changes == {"create": 1}


def test_get_deployment_updates(api, deployed):
    updates = api.get_deployment_updates(ORG, PROJECT, MAIN, deployed.id)
    assert isinstance(updates, list) and len(updates) == 1, updates
    assert updates[0].update_id == deployed.id
    assert updates[0].version >= 1
    check_update_info(updates[0], deployed)


def test_stack_after_update(stacks, deployed):
    got = stacks.get_stack(ORG, PROJECT, MAIN)
    assert isinstance(got, AppStack)
    assert got.version == 1  # the latest update's version
    assert got.active_update == ""  # nothing in progress
    assert got.tags == {"team": "blue", "ttl": str(TTL_MINUTES)}


def test_get_stack_updates(stacks, deployed):
    # The SDK types this response as Any: it returns the decoded JSON.
    history = stacks.get_stack_updates(ORG, PROJECT, MAIN, page=1, page_size=10)
    assert isinstance(history, dict), history
    updates = history["updates"]
    assert len(updates) == 1, updates
    u = updates[0]
    assert (u["kind"], u["result"], u["version"]) == ("update", "succeeded", 1), u
    assert u["resourceChanges"] == {"create": 1}, u
    assert deployed.before <= u["startTime"] <= u["endTime"] <= deployed.after, u


def test_get_latest_and_versioned_update(orgs, stacks, deployed):
    latest = stacks.get_latest_stack_update(ORG, PROJECT, MAIN)
    check_update_info(latest, deployed)
    at_one = stacks.get_stack_update(ORG, PROJECT, MAIN, 1)
    check_update_info(at_one, deployed)
    expect_error(404, stacks.get_stack_update, ORG, PROJECT, MAIN, 99)

    orgs.create_stack(ORG, PROJECT, AppCreateStackRequest(stack_name="no-updates"))
    expect_error(404, stacks.get_latest_stack_update, ORG, PROJECT, "no-updates")
    assert stacks.get_stack_updates(ORG, PROJECT, "no-updates")["updates"] == []


def read_events(server, stack, update_id):
    """Every engine event of a finished update, following continuationToken until null, as the
    raw JSON the Pulumi CLI reads (issue14-clients.md section 2.6).

    Read raw, not through `get_engine_events_update`: two of this SDK's models refuse what the
    Pulumi Service itself sends. GetUpdateEventsResponse rejects a null continuationToken, which
    is how every client learns the last page was reached, and AppStepEventMetadata rejects a null
    `old`, which Pulumi's apitype (`Old *StepEventStateMetadata`) sends for every create. Tarmac
    keeps Pulumi's wire semantics; the SDK call is still checked to reach the route (404 below)."""
    events, token = [], None
    deadline = time.monotonic() + DEADLINE
    base = f"{server.url}/api/stacks/{ORG}/{PROJECT}/{stack}/update/{update_id}/events"
    for _ in range(500):
        url = base if token is None else f"{base}?continuationToken={urllib.parse.quote(token)}"
        req = urllib.request.Request(url, headers={"Authorization": f"token {server.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = json.load(resp)
        assert set(page) == {"events", "continuationToken"}, page.keys()
        events.extend(page["events"])
        if page["continuationToken"] is None:
            return events
        assert time.monotonic() < deadline, "a finished update's events never ended"
        token = page["continuationToken"]
    pytest.fail("a finished update's events still had a continuationToken after 500 pages")


PAYLOADS = (
    "cancelEvent", "stdoutEvent", "diagnosticEvent", "preludeEvent", "summaryEvent",
    "resourcePreEvent", "resOutputsEvent", "resOpFailedEvent", "policyEvent",
    "policyRemediationEvent", "policyLoadEvent", "policyAnalyzeSummaryEvent",
    "policyRemediateSummaryEvent", "policyAnalyzeStackSummaryEvent",
    "startDebuggingEvent", "progressEvent", "errorEvent",
)


def test_engine_events(server, deployed):
    events = read_events(server, MAIN, deployed.id)
    assert events
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences), sequences
    for e in events:
        present = [p for p in PAYLOADS if e.get(p) is not None]
        assert len(present) == 1, (present, e)
        assert e["timestamp"] >= deployed.before - 1, e

    summaries = [e["summaryEvent"] for e in events if "summaryEvent" in e]
    assert len(summaries) == 1, summaries
    summary = summaries[0]
    assert summary["result"] == "succeeded"
    assert summary["isPreview"] is False
    assert summary["maybeCorrupt"] is False
    assert summary["resourceChanges"] == {"create": 1}

    text = "".join(e["diagnosticEvent"]["message"] for e in events if "diagnosticEvent" in e)
    assert "Apply complete" in text, text
    pre = [e["resourcePreEvent"]["metadata"] for e in events if "resourcePreEvent" in e]
    created = [m for m in pre if m["urn"].endswith("terraform_data.x") and m["op"] == "create"]
    assert created, pre
    assert created[0]["old"] is None and created[0]["new"]["urn"] == created[0]["urn"], created


def test_engine_events_of_another_stack_are_404(orgs, stacks, deployed):
    orgs.create_stack(ORG, PROJECT, AppCreateStackRequest(stack_name="other"))
    expect_error(404, stacks.get_engine_events_update, ORG, PROJECT, "other", deployed.id)


def test_cancel_finished_update_conflicts(stacks, deployed):
    expect_error(409, stacks.cancel_update_update, ORG, PROJECT, MAIN, deployed.id)


def test_export_stack(stacks, deployed):
    exported = stacks.export_stack(ORG, PROJECT, MAIN)
    assert isinstance(exported, AppUntypedDeployment)
    assert exported.version == 3
    resources = exported.deployment["resources"]
    root = [r for r in resources if r["type"] == "pulumi:pulumi:Stack"]
    assert len(root) == 1, resources
    assert root[0]["outputs"] == {"val": "one"}, root
    assert root[0]["urn"] == f"urn:pulumi:{MAIN}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{MAIN}", root
    expect_error(404, stacks.export_stack, ORG, PROJECT, "no-such-stack")


# --- the caller --------------------------------------------------------------------------------


def test_get_current_user(users):
    me = users.get_current_user()
    assert isinstance(me, User)
    assert me.github_login
    assert ORG in [o.github_login for o in me.organizations], me.organizations


def test_get_default_organization(users):
    org = users.get_default_organization()
    assert isinstance(org, AppGetDefaultOrganizationResponse)
    assert org.git_hub_login == ORG
    assert org.messages == []


def test_list_user_stacks_filters(orgs, stacks, users):
    tag = "lsfilter-tier"
    orgs.create_stack(ORG, "stk-ls-a", AppCreateStackRequest(stack_name="one", tags={tag: "gold"}))
    orgs.create_stack(ORG, "stk-ls-a", AppCreateStackRequest(stack_name="two", tags={tag: "silver"}))
    orgs.create_stack(ORG, "stk-ls-b", AppCreateStackRequest(stack_name="three", tags={tag: "gold"}))

    def names(resp):
        assert isinstance(resp, AppListStacksResponse)
        assert resp.continuation_token is None  # everything fits one page
        for s in resp.stacks:
            assert isinstance(s, AppStackSummary)
            assert s.org_name == ORG and s.id
        return {(s.project_name, s.stack_name) for s in resp.stacks}

    by_project = users.list_user_stacks(organization=ORG, project="stk-ls-a")
    assert names(by_project) == {("stk-ls-a", "one"), ("stk-ls-a", "two")}
    one = next(s for s in by_project.stacks if s.stack_name == "one")
    assert one.id == stacks.get_stack(ORG, "stk-ls-a", "one").id

    gold = users.list_user_stacks(organization=ORG, tag_name=tag, tag_value="gold")
    assert names(gold) == {("stk-ls-a", "one"), ("stk-ls-b", "three")}
    any_tier = users.list_user_stacks(organization=ORG, tag_name=tag)
    assert names(any_tier) == {("stk-ls-a", "one"), ("stk-ls-a", "two"), ("stk-ls-b", "three")}
    both = users.list_user_stacks(organization=ORG, project="stk-ls-b", tag_name=tag, tag_value="gold")
    assert names(both) == {("stk-ls-b", "three")}
    assert names(users.list_user_stacks(organization=ORG, project="stk-ls-none")) == set()


def test_list_user_stacks_reports_last_update(users, deployed):
    listed = users.list_user_stacks(organization=ORG, project=PROJECT)
    main = [s for s in listed.stacks if s.stack_name == MAIN]
    assert len(main) == 1, listed.stacks
    assert main[0].resource_count == 1
    # lastUpdate: unix seconds of the stack's last update.
    assert main[0].last_update and deployed.before <= main[0].last_update <= deployed.after, (
        main[0], deployed)


def test_capabilities(misc):
    caps = misc.capabilities()
    assert isinstance(caps, AppCapabilitiesResponse)
    assert isinstance(caps.capabilities, list)
    assert all(isinstance(c, AppAPICapabilityConfig) for c in caps.capabilities)


# --- webhooks ----------------------------------------------------------------------------------


def check_ping(delivery, got, url):
    """A ping's delivery record against what the receiver got."""
    assert isinstance(delivery, WebhookDelivery)
    assert delivery.kind == "ping"
    assert delivery.request_url == url
    assert delivery.response_code == 200
    assert delivery.response_body == "ok"
    assert delivery.timestamp > 0 and delivery.duration >= 0
    assert got.headers.get("Pulumi-Webhook-Kind") == "ping", got.headers
    assert got.headers.get("Pulumi-Webhook-ID") == delivery.id, got.headers
    assert got.body.decode() == delivery.payload
    assert json.loads(delivery.payload)  # a JSON payload


def test_stack_webhooks(orgs, stacks, receiver):
    project, stack = "stk-hooks", "hooked"
    orgs.create_stack(ORG, project, AppCreateStackRequest(stack_name=stack))
    assert stacks.list_stack_webhooks(ORG, project, stack) == []
    url = receiver.url + "/stack-hook"
    secret = "hook-secret"

    # No name: the server generates one.
    created = stacks.create_stack_webhook(ORG, project, stack, Webhook(
        organization_name=ORG, project_name=project, stack_name=stack,
        display_name="stack hook", payload_url=url, active=True, secret=secret,
        format="raw", groups=["stacks", "deployments"],
    ))
    assert isinstance(created, WebhookResponse)
    name = created.name
    assert name
    assert (created.organization_name, created.project_name, created.stack_name) == (ORG, project, stack)
    assert (created.display_name, created.payload_url, created.active) == ("stack hook", url, True)
    assert created.format == "raw"
    assert created.groups == ["stacks", "deployments"]
    assert created.has_secret is True
    assert created.secret_ciphertext and secret not in created.secret_ciphertext
    assert not created.secret  # never echoed

    listed = stacks.list_stack_webhooks(ORG, project, stack)
    assert [h.name for h in listed] == [name]
    assert all(isinstance(h, WebhookResponse) for h in listed)
    got = stacks.get_stack_webhook(ORG, project, stack, name)
    assert isinstance(got, WebhookResponse)
    assert (got.name, got.display_name, got.groups) == (name, "stack hook", ["stacks", "deployments"])

    # Update; no secret in the request keeps the stored one.
    updated = stacks.update_stack_webhook(ORG, project, stack, name, Webhook(
        organization_name=ORG, project_name=project, stack_name=stack, name=name,
        display_name="renamed hook", payload_url=url, active=False, format="raw",
        filters=["update_succeeded", "deployment_failed"],
    ))
    assert isinstance(updated, WebhookResponse)
    assert (updated.display_name, updated.active) == ("renamed hook", False)
    assert updated.filters == ["update_succeeded", "deployment_failed"]
    assert updated.has_secret is True
    assert updated.secret_ciphertext == created.secret_ciphertext
    assert stacks.get_stack_webhook(ORG, project, stack, name).display_name == "renamed hook"

    # Ping: sent now (even to an inactive hook), signed with the secret, recorded as a delivery.
    ping = stacks.ping_stack_webhook(ORG, project, stack, name)
    [first] = receiver.on("/stack-hook", 1)
    check_ping(ping, first, url)
    expected = hmac.new(secret.encode(), first.body, hashlib.sha256).hexdigest()
    assert first.headers.get("Pulumi-Webhook-Signature") == expected, first.headers

    deliveries = stacks.get_stack_webhook_deliveries(ORG, project, stack, name)
    assert isinstance(deliveries, list)
    assert all(isinstance(d, WebhookDelivery) for d in deliveries)
    mine = [d for d in deliveries if d.id == ping.id]
    assert len(mine) == 1, deliveries
    assert (mine[0].kind, mine[0].payload, mine[0].response_code) == ("ping", ping.payload, 200)

    again = stacks.redeliver_stack_webhook_event(ORG, project, stack, name, ping.id)
    assert isinstance(again, WebhookDelivery)
    assert (again.kind, again.payload, again.response_code) == ("ping", ping.payload, 200)
    reqs = receiver.on("/stack-hook", 2)
    assert len(reqs) == 2 and reqs[1].body == first.body
    expect_error(404, stacks.redeliver_stack_webhook_event, ORG, project, stack, name, "no-such-event")

    # Missing hooks and stacks.
    expect_error(404, stacks.get_stack_webhook, ORG, project, stack, "no-such-hook")
    expect_error(404, stacks.ping_stack_webhook, ORG, project, stack, "no-such-hook")
    expect_error(404, stacks.get_stack_webhook_deliveries, ORG, project, stack, "no-such-hook")
    expect_error(404, stacks.list_stack_webhooks, ORG, project, "no-such-stack")

    stacks.delete_stack_webhook(ORG, project, stack, name)
    expect_error(404, stacks.get_stack_webhook, ORG, project, stack, name)
    expect_error(404, stacks.delete_stack_webhook, ORG, project, stack, name)
    assert stacks.list_stack_webhooks(ORG, project, stack) == []


def test_org_webhooks(orgs, receiver):
    name = "stk-org-hook"
    url = receiver.url + "/org-hook"
    groups = ["deployments", "environments", "stacks"]

    def hook(**over):
        fields = dict(organization_name=ORG, name=name, display_name="org hook", payload_url=url,
                      active=True, format="raw", groups=groups)
        fields.update(over)
        return Webhook(**fields)

    created = orgs.create_organization_webhook(ORG, hook())
    assert isinstance(created, WebhookResponse)
    assert (created.name, created.organization_name) == (name, ORG)
    assert not created.project_name and not created.stack_name
    assert (created.display_name, created.payload_url, created.active) == ("org hook", url, True)
    assert created.format == "raw"
    assert created.groups == groups
    assert created.has_secret is False and created.secret_ciphertext == ""
    expect_error(409, orgs.create_organization_webhook, ORG, hook())

    listed = orgs.list_organization_webhooks(ORG)
    assert all(isinstance(h, WebhookResponse) for h in listed)
    assert [h.groups for h in listed if h.name == name] == [groups]
    got = orgs.get_organization_webhook(ORG, name)
    assert (got.name, got.display_name, got.format, got.groups) == (name, "org hook", "raw", groups)

    updated = orgs.update_organization_webhook(
        ORG, name, hook(display_name="org hook 2", active=False, groups=["stacks", "deployments"])
    )
    assert isinstance(updated, WebhookResponse)
    assert (updated.display_name, updated.active) == ("org hook 2", False)
    assert updated.groups == ["stacks", "deployments"]
    assert updated.format == "raw"
    assert orgs.get_organization_webhook(ORG, name).display_name == "org hook 2"

    ping = orgs.ping_organization_webhook(ORG, name)
    [first] = receiver.on("/org-hook", 1)
    check_ping(ping, first, url)
    assert "Pulumi-Webhook-Signature" not in first.headers  # no secret, no signature
    deliveries = orgs.get_organization_webhook_deliveries(ORG, name)
    assert [d.id for d in deliveries if d.id == ping.id] == [ping.id], deliveries
    again = orgs.redeliver_organization_webhook_event(ORG, name, ping.id)
    assert isinstance(again, WebhookDelivery) and again.response_code == 200
    assert len(receiver.on("/org-hook", 2)) == 2

    orgs.delete_organization_webhook(ORG, name)
    expect_error(404, orgs.get_organization_webhook, ORG, name)
    expect_error(404, orgs.delete_organization_webhook, ORG, name)
    assert name not in [h.name for h in orgs.list_organization_webhooks(ORG)]
