"""Cold init of a Lambda bootstrap: process start to its first poll of the Runtime API.

usage: lambda_init_time.py BOOTSTRAP [RUNS]
Needs the AWS emulator (AWS_ENDPOINT_URL, as tests/run.sh sets it) and runs with the
emulator venv's Python (boto3). Creates a table, FIFO queue and KMS key for the function's
configuration, serves a minimal Runtime API on 127.0.0.1, starts the bootstrap RUNS times and
prints the time from spawn to its first `GET /2018-06-01/runtime/invocation/next`.
Everything it starts, it stops.
"""
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

bootstrap = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
endpoint = os.environ["AWS_ENDPOINT_URL"]

first_poll = threading.Event()
polled_at = [0.0]


class RuntimeApi(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            if not first_poll.is_set():
                polled_at[0] = time.perf_counter()
                first_poll.set()
            # Hold the poll open, as the real Runtime API does between invocations.
            time.sleep(5)
        self.send_response(500)
        self.end_headers()

    def do_POST(self):
        self.send_response(202)
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()

session = boto3.session.Session(region_name="us-east-1")
suffix = uuid.uuid4().hex[:12]
ddb = session.client("dynamodb", endpoint_url=endpoint)
table = f"tarmac-init-{suffix}"
ddb.create_table(
    TableName=table, BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
)
queue = session.client("sqs", endpoint_url=endpoint).create_queue(
    QueueName=f"tarmac-init-{suffix}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
key = session.client("kms", endpoint_url=endpoint).create_key()["KeyMetadata"]["KeyId"]

env = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
    "AWS_LAMBDA_FUNCTION_NAME": "api", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/api",
    "AWS_LAMBDA_LOG_STREAM_NAME": "init", "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
    "TARMAC_TABLE": table, "TARMAC_QUEUE_URL": queue, "TARMAC_KMS_KEY_ID": key, "RUST_LOG": "warn",
    "TARMAC_PUBLIC_URL": "https://tarmac.example.com",
}
times = []
for i in range(runs):
    first_poll.clear()
    start = time.perf_counter()
    proc = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not first_poll.wait(10):
            sys.exit(f"run {i}: the bootstrap never polled the Runtime API")
        times.append((polled_at[0] - start) * 1000)
    finally:
        proc.kill()
        proc.wait()
server.shutdown()
times.sort()
# The first start also creates the data key; the rest find it.
print(f"{os.path.basename(os.path.dirname(bootstrap)) or bootstrap}: runs={runs} "
      f"p50={statistics.median(times):.1f} ms "
      f"min={times[0]:.1f} ms max={times[-1]:.1f} ms")
