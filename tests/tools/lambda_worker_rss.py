"""Peak RSS of the worker bootstrap while it runs one deployment, not counting the engine's
processes (P6).

usage: lambda_worker_rss.py API_BOOTSTRAP WORKER_BOOTSTRAP [RUNS]

Needs the AWS emulator (AWS_ENDPOINT_URL, as tests/run.sh sets it) and TARMAC_TEST_TOOLS (the
Terraform shim); runs with the emulator venv's Python (boto3). Per run it creates a table, a
FIFO queue, a KMS key and a state bucket, serves a minimal Runtime API on 127.0.0.1, feeds the
real `api` bootstrap the settings and create-deployment events from `events/`, takes the message
the api put on the queue, hands it to the real `worker` bootstrap (which restores and saves the
stack's state in the bucket), and reads the worker's VmHWM (the kernel's peak resident set of
that process alone) once it has answered. Everything it starts, it stops.
"""
import hashlib
import json
import os
import queue as q
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore.config

api_bin, worker_bin = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
endpoint = os.environ["AWS_ENDPOINT_URL"]
tools_bin = os.path.join(os.environ["TARMAC_TEST_TOOLS"], "bin")
events_dir = os.path.join(os.path.dirname(__file__), "..", "..", "events")

class RuntimeApi(BaseHTTPRequestHandler):
    """One Runtime API per process started, so a killed process's open poll never takes the
    next process's invocation."""
    invocations: "q.Queue[str]"
    replies: "q.Queue[bytes]"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/runtime/invocation/next"):
            self.send_response(404)
            self.end_headers()
            return
        # Held open until there is an invocation, as the real Runtime API does.
        event = self.invocations.get()
        body = event.encode()
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", str(uuid.uuid4()))
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + 600) * 1000)))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:tarmac")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        payload = self.rfile.read(length)
        if self.path.endswith("/response") or self.path.endswith("/error"):
            self.replies.put(payload)
        self.send_response(202)
        self.end_headers()


def runtime_api():
    """A fresh Runtime API: (its address, invocations to hand out, responses received)."""
    handler = type("Api", (RuntimeApi,), {"invocations": q.Queue(), "replies": q.Queue()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}", handler.invocations, handler.replies


session = boto3.session.Session(region_name="us-east-1")


def fixture(name, subs):
    text = open(os.path.join(events_dir, name)).read()
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


def start(binary, name, env):
    """Starts a bootstrap on a Runtime API of its own: (process, invocations, responses)."""
    address, invocations, responses = runtime_api()
    proc = subprocess.Popen([binary], env={**env, "AWS_LAMBDA_FUNCTION_NAME": name,
                                           "AWS_LAMBDA_RUNTIME_API": address},
                            stdout=subprocess.DEVNULL,
                            stderr=None if os.environ.get("RSS_DEBUG") else subprocess.DEVNULL)
    return proc, invocations, responses


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def one_run():
    suffix = uuid.uuid4().hex[:12]
    ddb = session.client("dynamodb", endpoint_url=endpoint)
    table = f"tarmac-rss-{suffix}"
    ddb.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                              for a in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": g, "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": f"{g}pk", "KeyType": "HASH"},
                           {"AttributeName": f"{g}sk", "KeyType": "RANGE"}]}
            for g in ("gsi1", "gsi2")],
    )
    sqs = session.client("sqs", endpoint_url=endpoint)
    queue_url = sqs.create_queue(QueueName=f"tarmac-rss-{suffix}.fifo",
                                 Attributes={"FifoQueue": "true", "VisibilityTimeout": "600"})["QueueUrl"]
    key = session.client("kms", endpoint_url=endpoint).create_key()["KeyMetadata"]["KeyId"]
    # Engine state in S3, as infra/ deploys the worker: the run restores and saves through it.
    s3 = session.client("s3", endpoint_url=endpoint,
                        config=botocore.config.Config(s3={"addressing_style": "path"}))
    bucket = f"tarmac-rss-{suffix}"
    s3.create_bucket(Bucket=bucket)
    token = "tmc_" + uuid.uuid4().hex
    ddb.put_item(TableName=table, Item={
        "pk": {"S": "TOKEN#" + hashlib.sha256(token.encode()).hexdigest()}, "sk": {"S": "#TOKEN"},
        "org": {"S": "acme"}, "role": {"S": "write"}, "name": {"S": "rss"}, "created": {"N": "0"}})

    work = tempfile.mkdtemp(prefix="tarmac-rss-")
    repo = os.path.join(work, "repo")
    os.makedirs(os.path.join(repo, "infra"))
    with open(os.path.join(repo, "infra", "main.tf"), "w") as f:
        f.write('resource "terraform_data" "x" {\n  input = "rss"\n}\noutput "val" { value = terraform_data.x.output }\n')
    git = ["git", "-C", repo, "-c", "user.email=t@example.com", "-c", "user.name=T", "-c", "commit.gpgsign=false"]
    subprocess.run(git[:3] + ["init", "-q", "-b", "main"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/tarmac", "AWS_LAMBDA_LOG_STREAM_NAME": "rss",
        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "TARMAC_TABLE": table, "TARMAC_QUEUE_URL": queue_url, "TARMAC_KMS_KEY_ID": key,
        "TARMAC_STATE_BUCKET": bucket,
        "TARMAC_PUBLIC_URL": "https://tarmac.example.com", "TARMAC_ALLOW_LOCAL_REPOS": "true",
        "TARMAC_CHILD_PATH": f"{tools_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "TARMAC_WORK_DIR": os.path.join(work, "work"), "TARMAC_STATE_DIR": os.path.join(work, "state"),
        "TARMAC_CACHE_DIR": os.path.join(work, "cache"),
        "TARMAC_SAFETY_MARGIN_SECS": "30", "RUST_LOG": "warn",
    }
    subs = {"__TOKEN__": token, "__REPO_URL__": "file://" + repo,
            "__TRACE_FILE__": os.path.join(work, "trace")}
    procs = []
    try:
        api, invocations, responses = start(api_bin, "api", env)
        procs.append(api)
        for name in ("apigw-v2-patch-settings.json", "apigw-v2-create-deployment.json"):
            invocations.put(fixture(name, subs))
            reply = json.loads(responses.get(timeout=60))
            if reply.get("statusCode") not in (200, 202):
                sys.exit(f"{name}: the api answered {reply}")
        api.kill()
        api.wait()
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=5,
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not got:
            sys.exit("the api put nothing on the queue")
        m = got[0]
        record = {
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m.get("Attributes", {}), "messageAttributes": {},
            "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tarmac.fifo", "awsRegion": "us-east-1",
        }
        worker, invocations, responses = start(worker_bin, "worker", env)
        procs.append(worker)
        invocations.put(json.dumps({"Records": [record]}))
        reply = json.loads(responses.get(timeout=int(os.environ.get("RSS_TIMEOUT", "300"))))
        if reply.get("batchItemFailures"):
            sys.exit(f"the worker reported failures: {reply}")
        hwm = status_kb(worker.pid, "VmHWM")
        rss = status_kb(worker.pid, "VmRSS")
        trace = open(subs["__TRACE_FILE__"]).read() if os.path.exists(subs["__TRACE_FILE__"]) else ""
        if "run" not in trace:
            sys.exit("the deployment's pre-run command did not run")
        saved = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if not any(k.endswith("terraform.tfstate") for k in saved):
            sys.exit(f"the worker saved no state to S3: {saved}")
        return hwm, rss
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


results = [one_run() for _ in range(runs)]
peaks = sorted(h for h, _ in results)
print(f"worker peak RSS over {runs} deployments: max {peaks[-1] / 1024:.1f} MB, "
      f"median {peaks[len(peaks) // 2] / 1024:.1f} MB (VmHWM of the worker process; "
      f"resident after the run: {results[-1][1] / 1024:.1f} MB)")
