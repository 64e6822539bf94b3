"""Replays the Pulumi Service provider's (`pulumiservice:index:*`) HTTP calls against a real
`tarmac serve`.

Client sources replayed (pulumi/pulumi-pulumiservice at dc76a018):
- provider/pkg/pulumiapi/client.go: the legacy `c.do` transport (headers, any 2xx is success,
  `{"code","message"}` error bodies, 404 = gone on reads);
- provider/pkg/pulumiapi/deployment_settings.go, provider/pkg/resources/deployment_settings.go,
  provider/pkg/apitype/secret_value.go, and `util.MergeSecretValue`: DeploymentSettings;
- provider/pkg/pulumiapi/stack.go, provider/pkg/resources/stack.go: Stack;
- provider/pkg/pulumiapi/stack_tags.go, provider/pkg/resources/stack_tags.go and
  stack_tags_plural.go: StackTag and StackTags;
- provider/pkg/pulumiapi/stack_schedules.go, provider/pkg/resources/deployment_schedules.go,
  drift_schedules.go, ttl_schedules.go: DeploymentSchedule, DriftSchedule, TtlSchedule;
- provider/pkg/pulumiapi/webhooks.go (`constructAPIPath`), provider/pkg/resources/webhook.go
  (`defaultWebhookGroups`, the format/group/filter enums): Webhook, including the
  `pulumi_deployments` format;
- provider/pkg/pulumiapi/agent_pools.go, provider/pkg/resources/agent_pool.go: AgentPool
  (`description` omitted when empty, the token read only from the create, 404 = gone on read,
  `?force=true` only with `forceDestroy`), and DeploymentSettings' `agentPoolId` property, sent
  as `agentPoolID`.

Deployments and deployment lists that the provider never reads are observed through Tarmac's v2
routes, test-side (`replay_support.setup`). One server per module; project `prov`.
"""

import base64
import binascii
import datetime
import time

from replay_support import (
    NO_BODY,
    ORG,
    assert_error_body,
    call,
    deploy,
    is_2xx,
    parse_go_datetime,
    setup,
    stack_deployments,
    stack_outputs,
    stack_path,
    update_from,
    wait_deployment,
    wait_for,
)

PROJECT = "prov"

# client.go (`c.do`): no custom User-Agent, so Go's default is sent.
PROVIDER_HEADERS = {
    "X-Pulumi-Source": "provider",
    "Accept": "application/vnd.pulumi+9",
    "Content-Type": "application/json",
    "User-Agent": "Go-http-client/1.1",
}
# Nothing listens there: deliveries to it just fail.
SINK = "http://127.0.0.1:9/hook"


def prov(server, method, path, body=NO_BODY, query=None):
    return call(server, method, path, body, headers=PROVIDER_HEADERS, query=query)


def require_ok(status, body, what):
    """client.go: any 2xx is success; otherwise `code` (or the HTTP status when 0) is the error."""
    assert is_2xx(status), f"the provider would fail: {what} answered {status} {body!r}"


def ci(obj, key):
    """Go decoding into a struct without json tags: keys match case-insensitively."""
    return next((v for k, v in obj.items() if k.lower() == key.lower()), None)


def create_stack(server, stack):
    """pulumiapi/stack.go: Stack Create."""
    status, body, _ = prov(server, "POST", f"/api/stacks/{ORG}/{PROJECT}", {"stackName": stack})
    require_ok(status, body, f"create stack {stack}")
    return stack_path(ORG, PROJECT, stack)


def read_tags(server, stack):
    """StackTag/StackTags Read: GET S, `tags` only (a 404 on the stack is an error here)."""
    status, body, _ = prov(server, "GET", stack)
    assert status == 200, f"read stack {stack}: {status} {body!r}"
    tags = body.get("tags") or {}
    assert isinstance(tags, dict), body
    return tags


def put_settings(server, stack, settings):
    """DeploymentSettings Create/Update: PUT the full body; 2xx with a JSON body (the outputs)."""
    status, body, _ = prov(server, "PUT", f"{stack}/deployments/settings", settings)
    require_ok(status, body, "PUT settings")
    assert isinstance(body, dict), f"the settings PUT must answer with the settings: {body!r}"
    return body


def settings_for(repo_url, env=None, pre_run=None):
    """What the provider sends for a DeploymentSettings resource (omitempty almost everywhere)."""
    op = {}
    if pre_run:
        op["preRunCommands"] = pre_run
    if env:
        op["environmentVariables"] = env
    body = {"sourceContext": {"git": {"repoUrl": repo_url, "branch": "refs/heads/main", "repoDir": "infra"}}}
    if op:
        body["operationContext"] = op
    return body


def decode_secret(value, what):
    """apitype/secret_value.go: a bare string is plain; any JSON object is a secret, `secret` its
    value and `ciphertext` a Go []byte (standard base64, padded)."""
    assert isinstance(value, dict), f"{what} must come back as a secret object: {value!r}"
    assert "isSecret" not in value, f"{what}: the explicit form is misread by the provider: {value!r}"
    if "ciphertext" in value:
        try:
            base64.b64decode(value["ciphertext"], validate=True)
        except (binascii.Error, TypeError):
            raise AssertionError(f"{what}: ciphertext is not standard base64: {value!r}")
    return value.get("secret")


def decode_settings(body, what):
    """The provider's Read of DeploymentSettings: the fields it turns into outputs."""
    vcs = body.get("vcs")
    assert vcs is None or (isinstance(vcs, dict) and vcs.get("provider")), (
        f"{what}: a vcs object without provider fails the read (type '' not recognized): {vcs!r}")
    env = (body.get("operationContext") or {}).get("environmentVariables") or {}
    assert isinstance(env, dict), body
    return env


# --- DeploymentSettings ------------------------------------------------------------------------


def test_deployment_settings_lifecycle(server, repo):
    stack = create_stack(server, "settings")
    env = {"PLAIN": "v", "SECRET": {"secret": "hunter2"}}
    created = put_settings(server, stack, settings_for(repo, env=env, pre_run=["echo hi"]))
    created_env = decode_settings(created, "create")
    assert created_env.get("PLAIN") == "v", created
    state_secret = decode_secret(created_env.get("SECRET"), "create SECRET")
    assert isinstance(state_secret, str) and state_secret and "hunter2" not in state_secret, created
    assert created["sourceContext"]["git"]["repoUrl"] == repo, created
    assert created["operationContext"]["preRunCommands"] == ["echo hi"], created

    # Read (refresh): the `secret` string must equal the one in state, or the provider loses
    # the user's plaintext and diffs forever (util.MergeSecretValue).
    for _ in range(2):
        status, read, _ = prov(server, "GET", f"{stack}/deployments/settings")
        assert status == 200, read
        read_env = decode_settings(read, "read")
        assert read_env.get("PLAIN") == "v", read
        assert decode_secret(read_env.get("SECRET"), "read SECRET") == state_secret, read
        assert read["operationContext"]["preRunCommands"] == ["echo hi"], read

    # Update: the full body again, one field changed, the same secret plaintext.
    updated = put_settings(server, stack, settings_for(repo, env=env, pre_run=["echo bye"]))
    new_state = decode_secret(decode_settings(updated, "update").get("SECRET"), "update SECRET")
    assert updated["operationContext"]["preRunCommands"] == ["echo bye"], updated
    for _ in range(2):
        status, read, _ = prov(server, "GET", f"{stack}/deployments/settings")
        assert status == 200, read
        assert read["operationContext"]["preRunCommands"] == ["echo bye"], read
        assert decode_secret(decode_settings(read, "read").get("SECRET"), "read") == new_state

    # Delete, then a read answers 404: the resource is gone.
    status, body, _ = prov(server, "DELETE", f"{stack}/deployments/settings")
    require_ok(status, body, "DELETE settings")
    status, body, _ = prov(server, "GET", f"{stack}/deployments/settings")
    assert_error_body(status, body, 404, "read of deleted settings")


# --- AgentPool ---------------------------------------------------------------------------------


def test_agent_pool_lifecycle_and_a_stack_routed_to_it(server, repo):
    pools = f"/api/orgs/{ORG}/agent-pools"
    # Create: `description` is omitempty; only `id` and `tokenValue` are read.
    status, created, _ = prov(server, "POST", pools, {"name": "prov-pool"})
    require_ok(status, created, "POST agent-pools")
    pool_id, token = created["id"], created["tokenValue"]
    assert pool_id and token, created
    resource_id = f"{ORG}/prov-pool/{pool_id}"  # the provider's resource id
    assert resource_id.split("/")[2] == pool_id

    # Read: id, name and description; no token (the provider keeps its own from state).
    status, read, _ = prov(server, "GET", f"{pools}/{pool_id}")
    assert status == 200, read
    assert (read["id"], read["name"], read.get("description", "")) == (pool_id, "prov-pool", "")
    assert "tokenValue" not in read, read

    # Update: the response body is ignored; any 2xx.
    status, body, _ = prov(server, "PATCH", f"{pools}/{pool_id}", {"name": "prov-pool-2", "description": "d"})
    require_ok(status, body, "PATCH agent-pool")
    status, read, _ = prov(server, "GET", f"{pools}/{pool_id}")
    assert (read["name"], read["description"]) == ("prov-pool-2", "d"), read

    # DeploymentSettings.agentPoolId goes on the wire as agentPoolID, in the full PUT body.
    stack = create_stack(server, "pooled")
    settings = settings_for(repo)
    settings["agentPoolID"] = pool_id
    stored = put_settings(server, stack, settings)
    assert stored["agentPoolID"] == pool_id, stored
    # A pool that does not exist is a client error with the error body the provider reports.
    settings["agentPoolID"] = "00000000-0000-4000-8000-000000000000"
    status, body, _ = prov(server, "PUT", f"{stack}/deployments/settings", settings)
    assert_error_body(status, body, 400, "settings naming a missing pool")

    # Delete without forceDestroy sends no query: the pool has no queued deployment, so it goes.
    status, body, _ = prov(server, "DELETE", f"{pools}/{pool_id}")
    require_ok(status, body, "DELETE agent-pool")
    # Read after delete: 404, which the provider takes as gone.
    status, body, _ = prov(server, "GET", f"{pools}/{pool_id}")
    assert_error_body(status, body, 404, "read of a deleted pool")
    # Delete again (a refresh raced it): the provider reports 404 as an error.
    status, body, _ = prov(server, "DELETE", f"{pools}/{pool_id}", query={"force": "true"})
    assert_error_body(status, body, 404, "delete of a deleted pool")


# --- Stack -------------------------------------------------------------------------------------


def test_stack_lifecycle_with_force_destroy(server, repo):
    stack = create_stack(server, "stack")
    status, body, _ = prov(server, "POST", f"/api/stacks/{ORG}/{PROJECT}", {"stackName": "stack"})
    # A second create is an error for the provider.
    assert_error_body(status, body, 409, "a second create of the stack")
    read_tags(server, stack)
    # Test-side: the stack gets resources, so only a forced delete may remove it.
    assert deploy(server, stack, update_from(repo))["status"] == "succeeded"
    # Delete with `forceDestroy: true`: the provider's own query key.
    status, body, _ = prov(server, "DELETE", stack, query="forceDestroy=true")
    require_ok(status, body, "DELETE stack ?forceDestroy=true")
    status, body, _ = prov(server, "GET", stack)
    assert_error_body(status, body, 404, "read of a deleted stack")


# --- StackTag, StackTags -----------------------------------------------------------------------


def add_tag(server, stack, name, value):
    return prov(server, "POST", f"{stack}/tags", {"name": name, "value": value})


def delete_tag(server, stack, name):
    return prov(server, "DELETE", f"{stack}/tags/{name}")


def test_stack_tag_and_tags(server):
    stack = create_stack(server, "tags")
    base = read_tags(server, stack)

    # StackTag `env=dev`.
    status, body, _ = add_tag(server, stack, "env", "dev")
    require_ok(status, body, "add tag env")
    assert read_tags(server, stack) == {**base, "env": "dev"}

    # StackTags {owner, cost-center}: one POST per tag, in sorted key order.
    for name, value in sorted({"owner": "me", "cost-center": "42"}.items()):
        status, body, _ = add_tag(server, stack, name, value)
        require_ok(status, body, f"add tag {name}")
    expected = {**base, "env": "dev", "owner": "me", "cost-center": "42"}
    assert read_tags(server, stack) == expected

    # A value change: tags are immutable per key, so delete, then create.
    status, body, _ = delete_tag(server, stack, "env")
    require_ok(status, body, "delete tag env")
    status, body, _ = add_tag(server, stack, "env", "prod")
    require_ok(status, body, "re-add tag env")
    expected["env"] = "prod"
    assert read_tags(server, stack) == expected

    # Refusals: 400 with code 400, and nothing changes.
    refused = [
        ("bad name!", "x"),          # outside ^[a-zA-Z0-9-_.:]{1,40}$
        ("n" * 41, "x"),             # name over 40 characters
        ("long", "a" * 257),         # value over 256 bytes
        ("long", "\u00e9" * 129),    # 129 characters, 258 bytes
        ("ttl", "abc"),              # not a whole number of minutes
        ("env", "again"),            # already exists
    ]
    for name, value in refused:
        status, body, _ = add_tag(server, stack, name, value)
        assert_error_body(status, body, 400, f"add tag {name[:12]!r}={value[:12]!r}")
        assert read_tags(server, stack) == expected, f"refused tag {name[:12]!r} changed the tags"

    # 256 bytes is the limit, not over it.
    status, body, _ = add_tag(server, stack, "max", "\u00e9" * 128)
    require_ok(status, body, "a 256-byte value")
    expected["max"] = "\u00e9" * 128
    assert read_tags(server, stack) == expected

    # Delete; a tag that is not there is 404.
    status, body, _ = delete_tag(server, stack, "owner")
    require_ok(status, body, "delete tag owner")
    del expected["owner"]
    assert read_tags(server, stack) == expected
    status, body, _ = delete_tag(server, stack, "owner")
    assert_error_body(status, body, 404, "delete of a missing tag")


# --- DeploymentSchedule, DriftSchedule, TtlSchedule --------------------------------------------


def schedule_stack(server, repo, name):
    """A stack with settings (schedules need them)."""
    stack = create_stack(server, name)
    put_settings(server, stack, settings_for(repo))
    return stack


def create_schedule(server, path, body):
    """Create/update decode only `id`."""
    status, resp, _ = prov(server, "POST", path, body)
    require_ok(status, resp, f"POST {path}")
    assert isinstance(resp.get("id"), str) and resp["id"], resp
    return resp["id"]


def read_schedule(server, stack, sid):
    status, body, _ = prov(server, "GET", f"{stack}/deployments/schedules/{sid}")
    assert status == 200, f"read schedule: {status} {body!r}"
    assert body.get("id") == sid, body
    # Never "" for either: the provider's parse fails, or the resource diffs for ever.
    assert body.get("scheduleOnce") != "" and body.get("scheduleCron") != "", body
    return body


def request_of(schedule):
    return (schedule.get("definition") or {}).get("request") or {}


def options_of(schedule):
    return (request_of(schedule).get("operationContext") or {}).get("options") or {}


def delete_schedule(server, stack, sid):
    status, body, _ = prov(server, "DELETE", f"{stack}/deployments/schedules/{sid}")
    require_ok(status, body, "DELETE schedule")
    status, body, _ = prov(server, "GET", f"{stack}/deployments/schedules/{sid}")
    assert_error_body(status, body, 404, "read of a deleted schedule")


def test_deployment_schedule(server, repo):
    stack = schedule_stack(server, repo, "sched")
    # stack_schedules.go: a Go time.Time (RFC 3339), `options` always present, no inheritSettings.
    sid = create_schedule(server, f"{stack}/deployments/schedules", {
        "scheduleOnce": "2030-12-31T23:59:00Z",
        "request": {"operation": "update", "operationContext": {"options": {}}},
    })
    got = read_schedule(server, stack, sid)
    # resources/deployment_schedules.go: time.Parse(time.DateTime, scheduleOnce).
    when = parse_go_datetime(got.get("scheduleOnce"), "scheduleOnce")
    assert when == datetime.datetime(2030, 12, 31, 23, 59), got
    assert got.get("scheduleCron") is None, got
    assert request_of(got).get("operation") == "update", got

    # Update to a cron schedule.
    assert create_schedule(server, f"{stack}/deployments/schedules/{sid}", {
        "scheduleCron": "0 0 * * 0",
        "request": {"operation": "preview", "operationContext": {"options": {}}},
    }) == sid
    got = read_schedule(server, stack, sid)
    assert got.get("scheduleCron") == "0 0 * * 0", got
    assert got.get("scheduleOnce") is None, got
    assert request_of(got).get("operation") == "preview", got
    delete_schedule(server, stack, sid)


def test_drift_schedule(server, repo):
    stack = schedule_stack(server, repo, "drift")
    # `autoRemediate` is omitempty: false is not sent.
    sid = create_schedule(server, f"{stack}/deployments/drift/schedules", {"scheduleCron": "0 */4 * * *"})
    got = read_schedule(server, stack, sid)
    assert got.get("scheduleCron") == "0 */4 * * *", got
    assert options_of(got).get("remediateIfDriftDetected", False) is False, got
    create_schedule(server, f"{stack}/deployments/drift/schedules/{sid}",
                    {"scheduleCron": "0 */4 * * *", "autoRemediate": True})
    assert options_of(read_schedule(server, stack, sid)).get("remediateIfDriftDetected") is True
    # Back to false: omitted on update, which must read as false.
    create_schedule(server, f"{stack}/deployments/drift/schedules/{sid}", {"scheduleCron": "0 */6 * * *"})
    got = read_schedule(server, stack, sid)
    assert got.get("scheduleCron") == "0 */6 * * *", got
    assert options_of(got).get("remediateIfDriftDetected", False) is False, got
    delete_schedule(server, stack, sid)


def test_ttl_schedule(server, repo):
    stack = schedule_stack(server, repo, "ttl")
    sid = create_schedule(server, f"{stack}/deployments/ttl/schedules",
                          {"timestamp": "2030-06-01T12:00:00Z", "deleteAfterDestroy": True})
    got = read_schedule(server, stack, sid)
    assert parse_go_datetime(got.get("scheduleOnce"), "scheduleOnce") == datetime.datetime(2030, 6, 1, 12, 0)
    assert options_of(got).get("deleteAfterDestroy") is True, got
    # The CLI labels a schedule TTL from a destroy request with an operationContext.
    assert request_of(got).get("operation") == "destroy", got
    assert isinstance(request_of(got).get("operationContext"), dict), got
    # `deleteAfterDestroy` false is omitted.
    create_schedule(server, f"{stack}/deployments/ttl/schedules/{sid}", {"timestamp": "2030-07-01T08:30:00Z"})
    got = read_schedule(server, stack, sid)
    assert parse_go_datetime(got.get("scheduleOnce"), "scheduleOnce") == datetime.datetime(2030, 7, 1, 8, 30)
    assert options_of(got).get("deleteAfterDestroy", False) is False, got
    delete_schedule(server, stack, sid)


# --- Webhook -----------------------------------------------------------------------------------


def create_hook(server, base, body):
    """Webhook Create: only `name` is read from the answer (the spec says 201)."""
    status, resp, _ = prov(server, "POST", base, body)
    assert status == 201, f"create webhook: {status} {resp!r}"
    name = ci(resp, "name")
    assert isinstance(name, str) and name, resp
    return name


def read_hook(server, base, name):
    """Webhook Read: active, displayName, payloadUrl, name, format, filters, groups."""
    status, body, _ = prov(server, "GET", f"{base}/{name}")
    assert status == 200, f"read webhook: {status} {body!r}"
    assert ci(body, "name") == name, body
    return body


def delete_hook(server, base, name):
    status, body, _ = prov(server, "DELETE", f"{base}/{name}")
    require_ok(status, body, "DELETE webhook")
    status, body, _ = prov(server, "GET", f"{base}/{name}")
    assert_error_body(status, body, 404, "read of a deleted webhook")


def test_org_webhook_with_default_groups(server):
    base = f"/api/orgs/{ORG}/hooks"
    # No filters or groups given: Check fills in the org default, `environments` included.
    body = {"organizationName": ORG, "displayName": "org hook", "payloadUrl": SINK,
            "active": True, "format": "raw", "groups": ["deployments", "environments", "stacks"]}
    name = create_hook(server, base, body)
    got = read_hook(server, base, name)
    assert ci(got, "active") is True, got
    assert ci(got, "displayName") == "org hook", got
    assert ci(got, "payloadUrl") == SINK, got
    assert ci(got, "format") == "raw", got
    assert ci(got, "groups") == ["deployments", "environments", "stacks"], got
    assert not ci(got, "filters"), got
    # Update: the create body plus `name`.
    status, resp, _ = prov(server, "PATCH", f"{base}/{name}",
                           {**body, "name": name, "displayName": "renamed", "active": False})
    require_ok(status, resp, "PATCH org webhook")
    got = read_hook(server, base, name)
    assert (ci(got, "displayName"), ci(got, "active")) == ("renamed", False), got
    assert ci(got, "groups") == ["deployments", "environments", "stacks"], got
    delete_hook(server, base, name)


def test_stack_webhook_with_filters(server):
    stack = create_stack(server, "hooks")
    base = f"{stack}/hooks"
    filters = ["environment_revision_created", "environment_created", "stack_created",
               "deployment_succeeded"]
    body = {"organizationName": ORG, "projectName": PROJECT, "stackName": "hooks",
            "displayName": "stack hook", "payloadUrl": SINK, "secret": "shh", "active": True,
            "format": "raw", "filters": filters}
    name = create_hook(server, base, body)
    got = read_hook(server, base, name)
    assert ci(got, "filters") == filters, got
    assert ci(got, "format") == "raw", got
    assert not ci(got, "groups"), got
    status, resp, _ = prov(server, "PATCH", f"{base}/{name}",
                           {**body, "name": name, "filters": list(reversed(filters))})
    require_ok(status, resp, "PATCH stack webhook")
    assert ci(read_hook(server, base, name), "filters") == list(reversed(filters))
    delete_hook(server, base, name)


def deployments_hook(project_stack, on_stack):
    """A `pulumi_deployments` stack webhook: payloadUrl names the target `<project>/<stack>`;
    the provider's default stack groups."""
    return {"organizationName": ORG, "projectName": PROJECT, "stackName": on_stack,
            "displayName": f"deploy {project_stack}", "payloadUrl": project_stack,
            "active": True, "format": "pulumi_deployments", "groups": ["deployments", "stacks"]}


def test_pulumi_deployments_webhook_deploys_the_target(server, repo):
    source = create_stack(server, "chain-a")
    target = create_stack(server, "chain-target")
    put_settings(server, source, settings_for(repo))
    put_settings(server, target, settings_for(repo, env={"TF_VAR_v": "from-webhook"}))
    name = create_hook(server, f"{source}/hooks", deployments_hook(f"{PROJECT}/chain-target", "chain-a"))
    got = read_hook(server, f"{source}/hooks", name)
    assert ci(got, "format") == "pulumi_deployments", got
    assert ci(got, "payloadUrl") == f"{PROJECT}/chain-target", got

    # Test-side: an update of the hooked stack succeeds...
    done = deploy(server, source, {"operation": "update", "inheritSettings": True})
    assert done["status"] == "succeeded", done
    # ...so the target stack is deployed with its own saved settings.
    found = wait_for(lambda: stack_deployments(server, target), "the webhook's deployment of the target")
    assert len(found) == 1, found
    assert found[0]["pulumiOperation"] == "update", found[0]
    finished = wait_deployment(server, target, found[0]["id"])
    assert finished["status"] == "succeeded", finished
    assert stack_outputs(server, target).get("val") == "from-webhook"
    assert len(stack_deployments(server, source)) == 1


def test_pulumi_deployments_webhook_refuses_other_orgs_and_urls(server):
    stack = create_stack(server, "chain-refused")
    base = f"{stack}/hooks"
    for url in ("other/prov/chain-target", "https://api.example.com/api/preview/default/prov/x/deployments"):
        status, body, _ = prov(server, "POST", base, deployments_hook(url, "chain-refused"))
        assert_error_body(status, body, 400, f"pulumi_deployments hook to {url}")
    status, hooks, _ = prov(server, "GET", base)
    assert status == 200, hooks
    assert hooks == [], f"a refused webhook was written: {hooks!r}"


def test_pulumi_deployments_webhook_loop_is_cut(server, repo):
    a = create_stack(server, "loop-a")
    b = create_stack(server, "loop-b")
    put_settings(server, a, settings_for(repo))
    put_settings(server, b, settings_for(repo))
    create_hook(server, f"{a}/hooks", deployments_hook(f"{PROJECT}/loop-b", "loop-a"))
    create_hook(server, f"{b}/hooks", deployments_hook(f"{PROJECT}/loop-a", "loop-b"))

    started = time.monotonic()
    assert deploy(server, a, {"operation": "update", "inheritSettings": True})["status"] == "succeeded"
    first_b = wait_for(lambda: stack_deployments(server, b), "A's webhook to deploy B")
    hop = time.monotonic() - started
    wait_deployment(server, b, first_b[0]["id"])
    # Give B's hook at least as long as A's took to fire back at A (it must not).
    time.sleep(max(3.0, 2 * hop))
    on_a, on_b = stack_deployments(server, a), stack_deployments(server, b)
    assert len(on_b) <= 1, f"one update of A led to {len(on_b)} deployments of B"
    assert len(on_a) == 1, f"the loop was not cut: A has {len(on_a)} deployments"
