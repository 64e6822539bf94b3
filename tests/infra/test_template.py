"""Least privilege in infra/template.yaml, checked on the template as CloudFormation will see it
(translated by aws-sam-translator, so the permissions SAM generates count too).

Run by tests/run.sh with the emulator venv's Python (it has aws-sam-translator).
"""
import os
import pathlib
import re
from fnmatch import fnmatchcase

import pytest
from samtranslator.internal.managed_policies import get_bundled_managed_policy_map
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

TEMPLATE = pathlib.Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
FUNCTIONS = {"ApiFunction": "ApiRole", "WorkerFunction": "WorkerRole",
             "WorkerImageFunction": "WorkerRole", "SchedulerFunction": "SchedulerRole",
             "OidcFunction": "OidcRole", "AgentGatewayFunction": "AgentGatewayRole"}
# The roles that carry out runs: the worker for its own, the agent gateway for agents'.
RUNNERS = {"WorkerRole", "AgentGatewayRole"}


class _Policies:
    def load(self):
        return get_bundled_managed_policy_map("aws", None)


@pytest.fixture(scope="module")
def resources():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = yaml_parse(TEMPLATE.read_text())
    return transform(template, {}, _Policies())["Resources"]


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(resources, role):
    """(action patterns, resource expressions, effect) of every statement of the role."""
    props = resources[role]["Properties"]
    assert not props.get("ManagedPolicyArns"), f"{role} has managed policies"
    out = []
    for policy in props.get("Policies", []):
        for s in policy["PolicyDocument"]["Statement"]:
            out.append((as_list(s["Action"]), as_list(s["Resource"]), s["Effect"], s.get("Sid")))
    return out


def refs(expr):
    """The logical ids and parameters an expression refers to (Ref, GetAtt, ${X} in Sub), in
    any branch of an Fn::If; AWS::NoValue and pseudo parameters are not references."""
    found = set()
    if isinstance(expr, list):
        for e in expr:
            found |= refs(e)
    elif isinstance(expr, dict):
        for k, v in expr.items():
            if k == "Ref":
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(as_list(v)[0].split(".")[0])
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
            elif k == "Fn::If":
                found |= refs(v[1]) | refs(v[2])
            else:
                found |= refs(v)
    return {f for f in found if not f.startswith("AWS::")}


def grants(resources, role, action):
    """The resource expressions for which the role's Allow statements grant `action`."""
    out = []
    for actions, res, effect, _ in statements(resources, role):
        if effect == "Allow" and any(fnmatchcase(action.lower(), a.lower()) for a in actions):
            out.extend(res)
    return out


ROLES = sorted(set(FUNCTIONS.values()))


def test_each_function_has_its_own_role(resources):
    for function, role in FUNCTIONS.items():
        assert resources[function]["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}


@pytest.mark.parametrize("role", ROLES)
def test_no_wildcard_actions_or_resources_and_every_statement_is_named(resources, role):
    for actions, res, effect, sid in statements(resources, role):
        assert effect == "Allow", f"{role}: {actions}"
        assert sid, f"{role}: a statement without a Sid: {actions}"
        for a in actions:
            service, _, verb = a.partition(":")
            assert "*" not in verb and a != "*", f"{role} grants {a}"
        for r in res:
            assert r != "*", f"{role} grants {actions} on every resource"
            assert refs(r), f"{role} grants {actions} on a resource outside this stack: {r}"


def test_only_oidc_may_sign_and_only_with_the_oidc_key(resources):
    for role in ROLES:
        signs = grants(resources, role, "kms:Sign")
        if role == "OidcRole":
            # Its own key, and the rotation key the operator names (a parameter).
            assert signs and set().union(*map(refs, signs)) == {"OidcKey", "OidcNextKeyArn"}, signs
        else:
            assert not signs, f"{role} may kms:Sign"
    # Nobody else may even read the signing key.
    for role in ROLES:
        if role != "OidcRole":
            for actions, res, _, _ in statements(resources, role):
                assert not any("OidcKey" in refs(r) for r in res), f"{role} reaches the OIDC key"


def test_only_the_api_reaches_the_token_table(resources):
    for role in ROLES:
        touches = [(a, r) for a, res, _, _ in statements(resources, role) for r in res if "TokenTable" in refs(r)]
        if role == "ApiRole":
            assert touches
        elif role == "AgentGatewayRole":
            # It checks pool tokens, and may do nothing else there.
            assert touches and all(a == ["dynamodb:GetItem"] for a, _ in touches), touches
        else:
            assert not touches, f"{role} reaches the token table"
    # ... and only those functions are told where it is.
    for function in FUNCTIONS:
        env = resources[function]["Properties"].get("Environment", {}).get("Variables", {})
        assert ("TARMAC_TOKEN_TABLE" in env) == (function in {"ApiFunction", "AgentGatewayFunction"}), function


def test_the_api_cannot_assume_roles_or_pass_them(resources):
    for action in ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "sts:GetFederationToken",
                   "iam:PassRole", "lambda:InvokeFunction", "kms:Sign"]:
        assert not grants(resources, "ApiRole", action), f"the api may {action}"


def test_only_the_runners_invoke_the_oidc_function(resources):
    for role in ROLES:
        invokes = grants(resources, role, "lambda:InvokeFunction")
        if role in RUNNERS:
            assert invokes and all(refs(r) == {"OidcFunction"} for r in invokes), invokes
        else:
            assert not invokes, f"{role} may invoke functions"
    # No resource policy lets any service or account invoke it.
    for rid, r in resources.items():
        if r["Type"] == "AWS::Lambda::Permission":
            assert "OidcFunction" not in refs(r["Properties"]["FunctionName"]), rid


def test_engine_state_is_read_only_by_the_runners(resources):
    for role in ROLES:
        reads = grants(resources, role, "s3:GetObject")
        assert bool(reads) == (role in RUNNERS), role


def test_api_gateway_sends_only_the_agent_api_to_the_agent_gateway(resources):
    routes = {r["Properties"]["RouteKey"]: r["Properties"]["Target"] for r in resources.values()
              if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert set(routes) == {"$default", "ANY /api/agent/{proxy+}"}, routes
    assert "AgentGatewayIntegration" in refs(routes["ANY /api/agent/{proxy+}"])
    assert "ApiIntegration" in refs(routes["$default"])


def test_production_defaults(resources):
    table = resources["Table"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires", "Enabled": True}
    queue = resources["Queue"]["Properties"]
    assert queue["FifoQueue"] and queue["ContentBasedDeduplication"] is False
    # Above the longest worker invocation the template allows.
    parameters = yaml_parse(TEMPLATE.read_text())["Parameters"]
    assert queue["VisibilityTimeout"] > parameters["WorkerTimeout"]["MaxValue"] == 900
    assert parameters["DeploymentTimeout"]["MaxValue"] <= 900 - 60
    assert queue["SqsManagedSseEnabled"] and resources["DeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
    for worker in ["WorkerFunction", "WorkerImageFunction"]:
        esm = resources[f"{worker}Deployments"]["Properties"]
        assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert esm["BatchSize"] == 1 and "MaximumConcurrency" in esm["ScalingConfig"]
        assert resources[worker]["Properties"]["Timeout"] == {"Ref": "WorkerTimeout"}
    tick = resources["SchedulerFunctionTick"]["Properties"]
    assert tick["ScheduleExpression"] == "rate(1 minute)"
    bucket = resources["StateBucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert resources["OidcKey"]["Properties"]["KeySpec"] == "RSA_2048"
    assert resources["OidcKey"]["Properties"]["KeyUsage"] == "SIGN_VERIFY"
    stage = resources["DefaultStage"]["Properties"]["DefaultRouteSettings"]
    assert "ThrottlingRateLimit" in stage and "ThrottlingBurstLimit" in stage
    for function in FUNCTIONS:
        logs = resources[function]["Properties"]["LoggingConfig"]["LogGroup"]
        group = resources[logs["Ref"]]["Properties"]
        assert "RetentionInDays" in group, function


def test_every_sender_groups_the_queue_alike_and_leaves_workers_to_other_orgs(resources):
    """A stack's messages must land in one group whichever function sends them, and one org's
    groups must not take every worker by default."""
    parameters = yaml_parse(TEMPLATE.read_text())["Parameters"]
    senders = [f for f in FUNCTIONS
               if "TARMAC_QUEUE_URL" in resources[f]["Properties"]["Environment"]["Variables"]]
    assert len(senders) >= 4, senders
    for f in senders:
        env = resources[f]["Properties"]["Environment"]["Variables"]
        assert env["TARMAC_QUEUE_GROUPS_PER_ORG"] == {"Ref": "QueueGroupsPerOrg"}, f
    groups = parameters["QueueGroupsPerOrg"]
    assert groups["Default"] < parameters["WorkerMaxConcurrency"]["Default"]
    assert (groups["MinValue"], groups["MaxValue"]) == (1, 1000)


def test_secret_references_are_read_with_the_stacks_role_unless_the_operator_opts_in(resources):
    """Deployments' secret references use the credentials of their stack's OIDC role: no
    function's own role may read a secret store, and the opt-in is off by default."""
    parameters = yaml_parse(TEMPLATE.read_text())["Parameters"]
    assert parameters["SecretsWithServerCredentials"]["Default"] == "false"
    for worker in ["WorkerFunction", "WorkerImageFunction"]:
        env = resources[worker]["Properties"]["Environment"]["Variables"]
        assert env["TARMAC_SECRETS_WITH_SERVER_CREDENTIALS"] == {"Ref": "SecretsWithServerCredentials"}
    for name, role in resources.items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                for action in actions:
                    assert not action.lower().startswith(("secretsmanager:", "ssm:")), (name, action)
