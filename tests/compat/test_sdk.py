"""Drives Tarmac only through the official Python `pulumi-cloud-sdk`, so every response must
deserialize with the SDK's strict models (reference §2.5), and checks what comes back.

One server per module (see conftest.py). The main stack `default/proj/sdk` gets settings, one
update deployment is run on it and shared by the tests that read it; tests that need to change
state (encrypt round trip, pause/resume) use stacks of their own so they cannot disturb it.
"""

import datetime
import json
import time
import urllib.error

import pytest
from pulumi_cloud_sdk.models import (
    CreateDeploymentRequest,
    CreateScheduledDeploymentRequest,
    CreateScheduledDriftDeploymentRequest,
    CreateScheduledTTLDeploymentRequest,
    CreateDeploymentResponse,
    DeploymentLogs,
    DeploymentLogsStep,
    DeploymentSettings,
    DeploymentSettingsRequest,
    GetDeploymentResponse,
    JobStatus,
    ListDeploymentResponseV2,
    OperationContextRequest,
    PulumiOperation,
    SecretValue,
    SourceContextGitRequest,
    SourceContextRequest,
    StackDeploymentsMetadataResponse,
)

ORG = "default"  # the org every fresh Tarmac data dir has
PROJECT = "proj"
STACK = "sdk"
SECRET = "s3cr3t-value"
TERMINAL = {"succeeded", "failed", "skipped"}


def settings_request(repo_url, env=None, pre_run=None):
    """Settings deploying infra/ from the test repo's main branch.

    Environment variables are SecretValues only: a plain (non-secret) variable is returned by the
    server as a bare JSON string, which is the canonical wire form for the docs, the Go CLI and the
    provider but which the SDK cannot deserialize into SecretValue (reference §3.1). So a plain
    variable would make every later settings read through the SDK fail, for reasons outside Tarmac.
    """
    return DeploymentSettingsRequest(
        source_context=SourceContextRequest(
            git=SourceContextGitRequest(
                repo_url=repo_url, branch="refs/heads/main", repo_dir="infra"
            )
        ),
        operation_context=OperationContextRequest(
            environment_variables=env, pre_run_commands=pre_run
        ),
    )


def wait_terminal(api, stack, dep_id, timeout=60.0):
    """Polls get_deployment until the deployment reaches a terminal status."""
    deadline = time.monotonic() + timeout
    while True:
        d = api.get_deployment(ORG, PROJECT, stack, dep_id)
        if str(d.status) in TERMINAL:
            return d
        assert time.monotonic() < deadline, f"deployment {dep_id} still {d.status} after {timeout}s"
        time.sleep(0.2)


def stream_logs(api, stack, dep_id, max_pages=1000):
    """Reads the whole streaming log, following nextToken until it is absent.

    Returns (pages, lines). Only meant for finished deployments, whose last page has no token.
    """
    pages, lines = [], []
    token = None
    for _ in range(max_pages):
        page = api.get_deployment_logs(ORG, PROJECT, stack, dep_id, continuation_token=token)
        pages.append(page)
        lines.extend(page.lines or [])
        if not page.next_token:
            return pages, lines
        token = page.next_token
    pytest.fail(f"logs of finished deployment {dep_id} still had a nextToken after {max_pages} pages")


def log_text(lines):
    return "".join(l.line or "" for l in lines)


def http_error_json(err):
    body = err.read()
    try:
        return json.loads(body)
    except ValueError:
        pytest.fail(f"error body is not JSON: {body!r}")


# --- shared state on the main stack ------------------------------------------------------------


@pytest.fixture(scope="module")
def patched(api, repo):
    """The response of the first settings patch on the main stack."""
    return api.patch_deployment_settings(
        ORG, PROJECT, STACK,
        settings_request(
            repo,
            env={"SECRET_VAR": SecretValue(secret=SECRET)},
            pre_run=["echo secret is $SECRET_VAR"],
        ),
    )


@pytest.fixture(scope="module")
def created(api, patched):
    """One update deployment on the main stack, using the saved settings."""
    # The SDK defaults inherit_settings to False and always sends it (reference §5.2).
    return api.create_api_deployment_handler_v2(
        ORG, PROJECT, STACK,
        CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True),
    )


@pytest.fixture(scope="module")
def finished(api, created):
    """The main deployment, once terminal."""
    return wait_terminal(api, STACK, created.id)


# --- tests -------------------------------------------------------------------------------------


def test_patch_settings_returns_encrypted_secret(patched, repo):
    assert isinstance(patched, DeploymentSettings)
    assert patched.source_context.git.repo_url == repo
    assert patched.source_context.git.branch == "refs/heads/main"
    assert patched.source_context.git.repo_dir == "infra"
    assert patched.operation_context.pre_run_commands == ["echo secret is $SECRET_VAR"]
    env = patched.operation_context.environment_variables
    assert set(env) == {"SECRET_VAR"}
    secret = env["SECRET_VAR"]
    assert isinstance(secret, SecretValue)
    assert secret.secret and secret.secret != SECRET
    assert SECRET not in secret.secret
    assert not secret.plaintext


def test_get_settings_round_trips(api, patched, repo):
    got = api.get_deployment_settings(ORG, PROJECT, STACK)
    assert isinstance(got, DeploymentSettings)
    assert got.source_context.git.repo_url == repo
    assert got.source_context.git.repo_dir == "infra"
    assert isinstance(got.version, int) and got.version >= 1
    assert got.version == patched.version
    assert got.operation_context.pre_run_commands == ["echo secret is $SECRET_VAR"]
    # The stored ciphertext comes back unchanged, never the plaintext.
    assert got.operation_context.environment_variables["SECRET_VAR"].secret == (
        patched.operation_context.environment_variables["SECRET_VAR"].secret
    )


def test_create_deployment(created):
    assert isinstance(created, CreateDeploymentResponse)
    assert created.id
    assert created.version == 1
    assert created.console_url
    assert created.console_url.endswith(f"/{ORG}/{PROJECT}/{STACK}/deployments/1")


def test_deployment_succeeds_with_steps(finished, created):
    assert isinstance(finished, GetDeploymentResponse)
    assert finished.status == JobStatus.Succeeded, f"deployment ended {finished.status}"
    assert finished.id == created.id
    assert finished.version == 1
    assert finished.latest_version >= 1
    assert finished.pulumi_operation == PulumiOperation.Update
    assert finished.requested_by is not None and finished.requested_by.name
    assert finished.jobs, "a finished deployment has a job"
    job = finished.jobs[0]
    assert job.status == JobStatus.Succeeded
    steps = [(s.name, str(s.status)) for s in job.steps]
    names = [n for n, _ in steps]
    # Get the source, run the one pre-run command, then Terraform; every step succeeded.
    assert names[0] == "Get source", steps
    assert "Pre-run command 1" in names, steps
    assert "pulumi update" in names, steps
    assert names.index("Pre-run command 1") < names.index("pulumi update"), steps
    assert all(status == "succeeded" for _, status in steps), steps


def test_streaming_logs_mask_secret(api, finished):
    pages, lines = stream_logs(api, STACK, finished.id)
    for page in pages:
        assert type(page) is DeploymentLogs, type(page)
    text = log_text(lines)
    headers = [l.header for l in lines if l.header]
    assert "pulumi update" in headers, headers
    assert "secret is [secret]" in text, text
    assert SECRET not in text
    assert all(SECRET not in (h or "") for h in headers)
    assert "Apply complete" in text, text


def test_step_logs(api, finished):
    names = [s.name for s in finished.jobs[0].steps]
    step = names.index("pulumi update")
    logs = api.get_deployment_logs(
        ORG, PROJECT, STACK, finished.id, job=0, step=step, offset=0, count=100
    )
    assert type(logs) is DeploymentLogsStep, type(logs)
    assert logs.name == "pulumi update"
    assert logs.lines, "the terraform step has output"
    assert len(logs.lines) <= 100
    text = "".join(l.line for l in logs.lines)
    # Apply's summary may lie past the first 100 lines; page on with nextOffset if so.
    offset = logs.next_offset
    while offset and "Apply complete" not in text:
        more = api.get_deployment_logs(
            ORG, PROJECT, STACK, finished.id, job=0, step=step, offset=offset, count=100
        )
        assert type(more) is DeploymentLogsStep
        if not more.lines:
            break
        text += "".join(l.line for l in more.lines)
        offset = more.next_offset
    assert "Apply complete" in text, text
    assert SECRET not in text


def test_list_stack_and_org_deployments(api, finished, created):
    # A second (preview) deployment, so "newest first" is actually checked.
    newer = api.create_api_deployment_handler_v2(
        ORG, PROJECT, STACK,
        CreateDeploymentRequest(operation=PulumiOperation.Preview, inherit_settings=True),
    )
    assert newer.version == 2
    wait_terminal(api, STACK, newer.id)

    listed = api.list_stack_deployments_handler_v2(ORG, PROJECT, STACK, page=1, page_size=10)
    assert isinstance(listed, ListDeploymentResponseV2)
    assert listed.total >= 2
    assert listed.items_per_page == 10
    ids = [d.id for d in listed.deployments]
    assert ids[0] == newer.id, ids
    assert created.id in ids
    first = listed.deployments[0]
    assert first.version == 2
    assert first.pulumi_operation == PulumiOperation.Preview
    assert first.requested_by is not None

    org = api.list_org_deployments(ORG, page=1, page_size=100)
    assert isinstance(org, ListDeploymentResponseV2)
    assert org.total >= 2
    org_ids = [d.id for d in org.deployments]
    assert newer.id in org_ids and created.id in org_ids
    mine = next(d for d in org.deployments if d.id == created.id)
    assert (mine.project_name, mine.stack_name) == (PROJECT, STACK)


def test_get_deployment_by_version(api, finished):
    by_version = api.get_deployment_version(ORG, PROJECT, STACK, "1")
    assert isinstance(by_version, GetDeploymentResponse)
    assert by_version.id == finished.id
    assert by_version.version == 1


def test_encrypt_secret_round_trip(api, repo):
    stack = "sdk-encrypt"
    enc = api.encrypt_deployment_settings_secret(
        ORG, PROJECT, stack, SecretValue(secret="hunter2")
    )
    assert isinstance(enc, SecretValue)
    assert enc.secret and "hunter2" not in enc.secret
    # Store the ciphertext the way clients send it back; the server must keep it as is (not
    # encrypt it a second time), and a deployment must see the original plaintext.
    saved = api.patch_deployment_settings(
        ORG, PROJECT, stack,
        settings_request(
            repo,
            env={"ENC": SecretValue(secret=enc.secret)},
            # The log echoes each command, so the marker is computed: "ENC-OK-42" appears only if
            # the test really passed.
            pre_run=['if [ "$ENC" = hunter2 ]; then echo ENC-OK-$((40 + 2)); fi'],
        ),
    )
    assert saved.operation_context.environment_variables["ENC"].secret == enc.secret
    dep = api.create_api_deployment_handler_v2(
        ORG, PROJECT, stack,
        CreateDeploymentRequest(operation=PulumiOperation.Preview, inherit_settings=True),
    )
    done = wait_terminal(api, stack, dep.id)
    _, lines = stream_logs(api, stack, dep.id)
    text = log_text(lines)
    assert done.status == JobStatus.Succeeded, text
    assert "ENC-OK-42" in text, text


def test_stack_metadata_pause_and_resume(api, repo):
    stack = "sdk-pause"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo))

    meta = api.stack_deployments_metadata(ORG, PROJECT, stack)
    assert isinstance(meta, StackDeploymentsMetadataResponse)
    assert (meta.paused, meta.stack_paused, meta.has_schedules) == (False, False, False)

    api.pause_stack_deployments(ORG, PROJECT, stack)
    meta = api.stack_deployments_metadata(ORG, PROJECT, stack)
    assert meta.stack_paused is True and meta.paused is True

    api.resume_stack_deployments(ORG, PROJECT, stack)
    meta = api.stack_deployments_metadata(ORG, PROJECT, stack)
    assert meta.stack_paused is False and meta.paused is False


def test_cancel_finished_deployment_conflicts(api, finished):
    with pytest.raises(urllib.error.HTTPError) as e:
        api.cancel_deployment(ORG, PROJECT, STACK, finished.id)
    assert e.value.code == 409
    body = http_error_json(e.value)
    assert body.get("code") == 409, body
    assert isinstance(body.get("message"), str) and body["message"], body


def test_wrong_token_is_unauthorized(server, patched):
    bad = server.api(token="tmc_not-a-real-token")
    with pytest.raises(urllib.error.HTTPError) as e:
        bad.get_deployment_settings(ORG, PROJECT, STACK)
    assert e.value.code == 401
    body = http_error_json(e.value)
    assert body.get("code") == 401, body


def test_schedules_drift_and_ttl_through_the_sdk(api, repo):
    """Every schedule shape deserializes with the SDK's strict models (ScheduledAction needs
    lastExecuted even before a first run), on a stack of its own."""
    stack = "sdk-schedules"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo))
    cron = api.create_scheduled_deployment(
        ORG, PROJECT, stack,
        CreateScheduledDeploymentRequest(
            schedule_cron="0 0 * * 0",
            request=CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True),
        ),
    )
    assert cron.schedule_cron == "0 0 * * 0"
    assert cron.last_executed == "" and cron.paused is False and cron.next_execution
    drift = api.create_scheduled_drift_deployment(
        ORG, PROJECT, stack, CreateScheduledDriftDeploymentRequest(schedule_cron="0 */4 * * *", auto_remediate=True))
    assert drift.definition["request"]["operation"] == "detect-drift"
    assert drift.definition["request"]["operationContext"]["options"]["remediateIfDriftDetected"] is True
    ttl = api.create_scheduled_ttl_deployment(
        ORG, PROJECT, stack,
        CreateScheduledTTLDeploymentRequest(timestamp=datetime.datetime(2030, 12, 31, 23, 59), delete_after_destroy=True))
    # Pulumi's service writes schedule times as "YYYY-MM-DD hh:mm:ss.fff" (UTC).
    assert ttl.schedule_once == "2030-12-31 23:59:00.000"

    listed = api.list_scheduled_deployment(ORG, PROJECT, stack)
    assert {s.id for s in listed.schedules} == {cron.id, drift.id, ttl.id}
    assert api.read_scheduled_deployment(ORG, PROJECT, stack, drift.id).id == drift.id
    api.pause_scheduled_deployment(ORG, PROJECT, stack, cron.id)
    assert api.read_scheduled_deployment(ORG, PROJECT, stack, cron.id).paused is True
    assert api.list_scheduled_deployment_history(ORG, PROJECT, stack, cron.id).schedule_history_events == []
    meta = api.stack_deployments_metadata(ORG, PROJECT, stack)
    assert meta.has_schedules is True
    status = api.get_stack_drift_status(ORG, PROJECT, stack)
    assert status.drift_detected is False and status.latest_drift_run == ""
    assert api.list_drift_runs(ORG, PROJECT, stack, page=1, page_size=10).total == 0

    # Exactly one of scheduleCron and scheduleOnce: the SDK's nulls count as absent.
    with pytest.raises(urllib.error.HTTPError) as err:
        api.create_scheduled_deployment(
            ORG, PROJECT, stack,
            CreateScheduledDeploymentRequest(request=CreateDeploymentRequest(operation=PulumiOperation.Update)))
    assert err.value.code == 400
    assert json.loads(err.value.read())["code"] == 400


def test_settings_replace_and_delete_and_the_cache_through_the_sdk(api, repo):
    """PUT replaces the settings (what it omits is gone), DELETE removes them, and clearing the
    project cache (a no-op in Tarmac) answers success."""
    stack = "sdk-replace"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo, pre_run=["echo before"]))
    assert api.get_deployment_settings(ORG, PROJECT, stack).operation_context.pre_run_commands == ["echo before"]
    replaced = api.replace_deployment_settings(ORG, PROJECT, stack, settings_request(repo))
    assert replaced.source_context.git.branch == "refs/heads/main"
    got = api.get_deployment_settings(ORG, PROJECT, stack)
    assert not (got.operation_context and got.operation_context.pre_run_commands), got
    api.clear_project_cache(ORG, PROJECT, stack)
    assert api.delete_deployment_settings(ORG, PROJECT, stack) in (True, None)
    with pytest.raises(urllib.error.HTTPError) as err:
        api.get_deployment_settings(ORG, PROJECT, stack)
    assert err.value.code == 404


def test_schedules_are_updated_resumed_and_deleted_through_the_sdk(api, repo):
    stack = "sdk-schedule-edits"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo))
    update = CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True)
    cron = api.create_scheduled_deployment(
        ORG, PROJECT, stack, CreateScheduledDeploymentRequest(schedule_cron="0 0 * * 0", request=update))
    changed = api.update_scheduled_deployment(
        ORG, PROJECT, stack, cron.id, CreateScheduledDeploymentRequest(schedule_cron="30 1 * * *", request=update))
    assert changed.id == cron.id and changed.schedule_cron == "30 1 * * *"
    api.pause_scheduled_deployment(ORG, PROJECT, stack, cron.id)
    api.resume_scheduled_deployment(ORG, PROJECT, stack, cron.id)
    assert api.read_scheduled_deployment(ORG, PROJECT, stack, cron.id).paused is False

    drift = api.create_scheduled_drift_deployment(
        ORG, PROJECT, stack, CreateScheduledDriftDeploymentRequest(schedule_cron="0 */4 * * *", auto_remediate=False))
    drift2 = api.update_scheduled_drift_deployment(
        ORG, PROJECT, stack, drift.id, CreateScheduledDriftDeploymentRequest(schedule_cron="0 */6 * * *", auto_remediate=True))
    assert drift2.schedule_cron == "0 */6 * * *"
    assert drift2.definition["request"]["operationContext"]["options"]["remediateIfDriftDetected"] is True

    ttl = api.create_scheduled_ttl_deployment(
        ORG, PROJECT, stack, CreateScheduledTTLDeploymentRequest(timestamp=datetime.datetime(2030, 1, 1), delete_after_destroy=False))
    ttl2 = api.update_scheduled_ttl_deployment(
        ORG, PROJECT, stack, ttl.id,
        CreateScheduledTTLDeploymentRequest(timestamp=datetime.datetime(2031, 6, 1, 12, 0), delete_after_destroy=True))
    assert ttl2.schedule_once == "2031-06-01 12:00:00.000"

    for s in (cron, drift, ttl):
        api.delete_scheduled_deployment(ORG, PROJECT, stack, s.id)
    assert api.list_scheduled_deployment(ORG, PROJECT, stack).schedules == []


def test_a_drift_run_is_read_through_the_sdk(api, repo):
    stack = "sdk-drift-run"
    api.patch_deployment_settings(ORG, PROJECT, stack, settings_request(repo))
    created = api.create_api_deployment_handler_v2(
        ORG, PROJECT, stack, CreateDeploymentRequest(operation=PulumiOperation.DetectDrift, inherit_settings=True))
    assert str(wait_terminal(api, stack, created.id).status) == "succeeded"
    runs = api.list_drift_runs(ORG, PROJECT, stack, page=1, page_size=10)
    assert runs.total == 1
    run = api.get_drift_run(ORG, PROJECT, stack, runs.drift_runs[0].id)
    assert run.id == runs.drift_runs[0].id


def test_org_pause_resume_and_metadata_through_the_sdk(api):
    api.pause_org_deployments(ORG)
    try:
        assert api.org_deployments_metadata(ORG).paused is True
    finally:
        api.resume_org_deployments(ORG)
    assert api.org_deployments_metadata(ORG).paused is False



def test_agent_pools_through_the_sdk(server, api):
    """The SDK's WorkflowsApi agent-pool calls (create, list, get, patch, delete with force), and a
    stack routed to the pool through `agentPoolID` in the SDK's settings model."""
    from pulumi_cloud_sdk import ApiClient, Configuration
    from pulumi_cloud_sdk.apis.workflows_api_ import WorkflowsApi
    from pulumi_cloud_sdk.models import CreateOrgAgentPoolRequest

    cfg = Configuration()
    cfg.host = server.url
    cfg.access_token = server.token
    pools = WorkflowsApi(ApiClient(cfg))

    created = pools.create_org_agent_pool(
        ORG, CreateOrgAgentPoolRequest(name="sdk-pool", description="from the SDK")
    )
    assert created.token_value.startswith("tpa_")
    listed = pools.list_org_agent_pool(ORG)
    mine = [p for p in listed.agent_pools if p.id == created.id]
    assert len(mine) == 1 and mine[0].name == "sdk-pool" and mine[0].status == "offline"
    detail = pools.get_agent_pool(ORG, created.id)
    assert detail.description == "from the SDK" and detail.agents == []
    patched = pools.patch_org_agent_pool(
        ORG, created.id, CreateOrgAgentPoolRequest(name="renamed", description="d")
    )
    assert (patched.name, patched.description) == ("renamed", "d")

    stack = "sdk-pool-stack"
    api.patch_deployment_settings(
        ORG,
        PROJECT,
        stack,
        DeploymentSettingsRequest(
            agent_pool_id=created.id,
            source_context=SourceContextRequest(
                git=SourceContextGitRequest(repo_url="https://example.com/r.git")
            ),
        ),
    )
    assert api.get_deployment_settings(ORG, PROJECT, stack).agent_pool_id == created.id
    queued = api.create_api_deployment_handler_v2(
        ORG, PROJECT, stack,
        CreateDeploymentRequest(operation=PulumiOperation.Update, inherit_settings=True),
    )
    # No agent serves the pool: it stays queued, and a plain delete is refused.
    time.sleep(1.0)
    assert api.get_deployment(ORG, PROJECT, stack, queued.id).status == "not-started"
    with pytest.raises(Exception) as refused:
        pools.delete_org_agent_pool(ORG, created.id)
    assert getattr(refused.value, "status", None) == 409
    pools.delete_org_agent_pool(ORG, created.id, force=True)
    assert api.get_deployment(ORG, PROJECT, stack, queued.id).status == "failed"
    with pytest.raises(Exception) as gone:
        pools.get_agent_pool(ORG, created.id)
    assert getattr(gone.value, "status", None) == 404


def test_the_audit_log_through_the_sdk(server, api):
    """`OrganizationsApi.list_audit_log_events_handler_v1` reads Tarmac's audit log into the SDK's
    `AuditLogEvent` models: a change made just before is there, with the token's name."""
    from pulumi_cloud_sdk import ApiClient, Configuration
    from pulumi_cloud_sdk.apis.organizations_api_ import OrganizationsApi

    api.pause_org_deployments(ORG)
    api.resume_org_deployments(ORG)
    cfg = Configuration()
    cfg.host = server.url
    cfg.access_token = server.token
    orgs = OrganizationsApi(ApiClient(cfg))
    log = orgs.list_audit_log_events_handler_v1(ORG, start_time=int(time.time()) - 3600)
    events = [e for e in log.audit_log_events if e.event.endswith("/deployments/resume")]
    assert events, [e.event for e in log.audit_log_events]
    assert events[0].token_name == "bootstrap-admin" and events[0].source_ip == "127.0.0.1"
    assert events[0].timestamp >= int(time.time()) - 3600
