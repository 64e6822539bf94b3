"""Lists the AWS resources of a deployed Tarmac stack, by kind, as JSON on stdout.

usage: aws_resources.py STACK_NAME
Runs with the emulator venv's boto3 against AWS_ENDPOINT_URL. The infra test calls it after
deploying (every kind must be there, so the listing is known to find things) and after
destroying (nothing may be left). KMS keys scheduled for deletion count as gone, as in AWS.
"""
import json
import sys

import boto3

stack = sys.argv[1]
prefix = f"{stack}-"


def client(name):
    return boto3.client(name)


def every(service, operation, key, **kwargs):
    """Every item of a listing, following its pages (other tests' tables, say, can fill the
    first page)."""
    for page in client(service).get_paginator(operation).paginate(**kwargs):
        yield from page[key]


found = {}
found["functions"] = [
    f["FunctionName"]
    for f in every("lambda", "list_functions", "Functions")
    if f["FunctionName"].startswith(prefix)
]
found["event_source_mappings"] = [
    m["UUID"]
    for m in every("lambda", "list_event_source_mappings", "EventSourceMappings")
    if f":function:{prefix}" in m.get("FunctionArn", "")
]
found["tables"] = [t for t in every("dynamodb", "list_tables", "TableNames") if t.startswith(prefix)]
found["queues"] = client("sqs").list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
found["buckets"] = [b["Name"] for b in client("s3").list_buckets()["Buckets"] if b["Name"].startswith(prefix)]
found["rules"] = [r["Name"] for r in client("events").list_rules(NamePrefix=prefix)["Rules"]]
found["log_groups"] = [
    g["logGroupName"]
    for g in client("logs").describe_log_groups(logGroupNamePrefix=f"/tarmac/{stack}/")["logGroups"]
]
found["roles"] = [r["RoleName"] for r in every("iam", "list_roles", "Roles") if r["RoleName"].startswith(prefix)]
found["apis"] = [a["ApiId"] for a in client("apigatewayv2").get_apis()["Items"] if a["Name"] == stack]
found["alarms"] = [
    a["AlarmName"] for a in client("cloudwatch").describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
]
kms = client("kms")
found["kms_keys"] = []
for k in kms.list_keys()["Keys"]:
    meta = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]
    if f"({stack})" in meta.get("Description", "") and meta["KeyState"] != "PendingDeletion":
        found["kms_keys"].append(k["KeyId"])
print(json.dumps(found))
