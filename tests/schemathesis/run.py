"""Schemathesis against a real `tarmac serve`, driven by the server's own OpenAPI document.

Starts the server on 127.0.0.1 with a fresh data dir, gives it a stack to find, then runs
schemathesis's examples, coverage, fuzzing and stateful phases over every operation with an
admin token, then a stateful pass over the operations the document's links join. Checks: no 5xx, every response in the schema (every 4xx is `{code, message}`), only
documented statuses and content types. Fails if fewer than MIN_CASES cases ran.

    python tests/schemathesis/run.py                 # CI: 25 examples an operation
    python tests/schemathesis/run.py --examples 200  # the longer run (README)

Env: TARMAC_BIN (default target/debug/tarmac), SCHEMATHESIS (the CLI; default beside this
Python).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The operations the document's links join (`LINKS` in shared/src/http/openapi.rs).
LINKED = [
    "deployments_create",
    "deployments_get_by_id",
    "deployments_logs",
    "deployments_cancel",
    "stacks_create_stack",
    "stacks_get_stack",
    "agent_pools_create",
    "agent_pools_get",
]
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def start(data_dir):
    """`tarmac serve` on a free loopback port: (process, url, bootstrap token)."""
    binary = os.environ.get("TARMAC_BIN", str(ROOT / "target/debug/tarmac"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARMAC_")}
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    url = token = None
    for line in proc.stdout:
        if line.startswith("Tarmac listening on "):
            url = line.split("on ", 1)[1].strip()
        elif line.strip().startswith("tmc_"):
            token = line.strip()
        elif line.startswith("Press Ctrl+C"):
            break
    if not url or not token:
        proc.kill()
        sys.exit("tarmac serve did not print its address and token")
    return proc, url, token


def call(url, token, method, path, body=None):
    req = urllib.request.Request(
        url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read() or b"null")


def seed(url, token):
    """Something for the generated requests to find: a stack with settings, a tag, a hook."""
    s = "/api/stacks/default/proj/seeded"
    call(url, token, "POST", "/api/stacks/default/proj", {"stackName": "seeded"})
    settings = {
        "sourceContext": {"git": {"repoUrl": "https://git.invalid/r.git", "branch": "main"}},
        "operationContext": {"environmentVariables": {"A": "b"}},
    }
    call(url, token, "POST", f"{s}/deployments/settings", settings)
    call(url, token, "POST", f"{s}/tags", {"name": "team", "value": "core"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=25, help="cases an operation and phase")
    parser.add_argument("--min-cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    cli = os.environ.get("SCHEMATHESIS", str(Path(sys.executable).parent / "schemathesis"))
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as reports:
        proc, url, token = start(data_dir)
        try:
            seed(url, token)
            common = [
                cli,
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                f"{url}/api/openapi.json",
                "--header",
                f"Authorization: token {token}",
                "--checks",
                CHECKS,
                "--request-timeout",
                "10",
                "--generation-with-security-parameters",
                "false",
                "--generation-database",
                "none",
                "--suppress-health-check",
                "all",
                "--report",
                "junit",
                "--report-dir",
                reports,
                "--no-color",
            ]
            if args.seed is not None:
                common += ["--seed", str(args.seed)]
            # Among all operations' inferred links the stateful phase rarely walks the document's
            # own, so they get a stateful pass of their own, first, while the seeded stack is as
            # it was made: create, then read what was made.
            linked = ["--phases", "stateful", "--max-examples", "300"]
            for op in LINKED:
                linked += ["--include-operation-id", op]
            # Its own cache directory (.schemathesis) goes with the reports, not in the checkout.
            chain = subprocess.run(common + linked, text=True, capture_output=True, cwd=reports)
            print(chain.stdout[-5000:])
            every = ["--max-examples", str(args.examples), "--workers", "2"]
            every += ["--phases", "examples,coverage,fuzzing,stateful"]
            run = subprocess.run(common + every, text=True, capture_output=True, cwd=reports)
            print(run.stdout[-20000:])
            print(run.stderr[-5000:], file=sys.stderr)
            alive = proc.poll() is None
        finally:
            # The server lets running deployments end first (up to a minute or so); then kill.
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cases = count_cases(run.stdout)
        print(f"schemathesis: {cases} test cases, exit {run.returncode}")
        if not alive:
            sys.exit("tarmac serve died during the run")
        links = re.search(r"API Links:\s*(\d+) covered", chain.stdout)
        covered = int(links.group(1)) if links else 0
        print(f"schemathesis: the links' stateful pass covered {covered} links, exit {chain.returncode}")
        if run.returncode != 0 or chain.returncode != 0:
            sys.exit("schemathesis found failures")
        # It follows six or seven of them here; three leaves room for chance.
        if covered < 3:
            sys.exit(f"the stateful pass followed only {covered} links")
        if cases < args.min_cases:
            sys.exit(f"only {cases} test cases ran; at least {args.min_cases} are required")


def count_cases(out):
    """The run's generated test cases, from schemathesis's summary."""
    m = re.search(r"Test cases:\s*\n?\s*([\d,]+) generated", out)
    if m:
        return int(m.group(1).replace(",", ""))
    m = re.search(r"([\d,]+) generated", out)
    return int(m.group(1).replace(",", "")) if m else 0


if __name__ == "__main__":
    main()
