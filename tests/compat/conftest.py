"""Fixtures for the pulumi-cloud-sdk compatibility tests: a real `tarmac serve` and a git repo.

Mirrors tests/blackbox/support.rs: the server is started on a fresh data dir with an ephemeral
port, its banner is parsed for the URL and the bootstrap admin token, and it is killed at the end.
"""

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from pulumi_cloud_sdk import ApiClient, Configuration
from pulumi_cloud_sdk.apis.deployments_api_ import DeploymentsApi

ROOT = Path(__file__).resolve().parents[2]

# Only `terraform_data`, so the run needs no provider downloads.
PROGRAM = """\
variable "v" {
  default = "one"
}
resource "terraform_data" "x" {
  input = var.v
}
output "val" {
  value = terraform_data.x.output
}
"""


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen

    def api(self, token=None):
        """A DeploymentsApi bound to this server. The client must be passed explicitly:
        `DeploymentsApi()` alone would talk to api.pulumi.com (reference §7)."""
        cfg = Configuration()
        cfg.host = self.url
        cfg.access_token = self.token if token is None else token
        return DeploymentsApi(ApiClient(cfg))


def _tarmac_bin():
    return os.environ.get("TARMAC_BIN") or str(ROOT / "target" / "debug" / "tarmac")


def _tools_bin():
    tools = os.environ.get("TARMAC_TEST_TOOLS") or str(ROOT / "target" / "test-tools")
    return Path(tools) / "bin"


@pytest.fixture(scope="module")
def server():
    data_dir = tempfile.mkdtemp(prefix="tarmac-compat-")
    env = dict(os.environ)
    env["PATH"] = f"{_tools_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.pop("TARMAC_DATA_DIR", None)
    env.setdefault("CHECKPOINT_DISABLE", "1")
    stderr = None if os.environ.get("TARMAC_TEST_LOG") else subprocess.DEVNULL
    proc = subprocess.Popen(
        [_tarmac_bin(), "serve", "--listen", "127.0.0.1:0", "--allow-local-repos",
         "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        text=True,
    )
    try:
        url = token = None
        banner = []
        # The banner ends with the Ctrl+C hint; EOF before it means the server died.
        for line in proc.stdout:
            banner.append(line)
            stripped = line.strip()
            if line.startswith("Tarmac listening on "):
                url = line[len("Tarmac listening on "):].strip()
            elif stripped.startswith("tmc_"):
                token = stripped
            elif line.startswith("Press Ctrl+C"):
                break
        assert url and token, f"unexpected banner from tarmac serve: {''.join(banner)!r}"
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        yield Server(url=url, token=token, proc=proc)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(server):
    return server.api()


# Fails at plan time, before any resource is created: the precondition refers to a variable, so
# Terraform accepts the configuration, then refuses to apply it ("Resource precondition failed").
FAILING_PROGRAM = """\
variable "ok" {
  default = false
}
resource "terraform_data" "x" {
  input = "x"
  lifecycle {
    precondition {
      condition     = var.ok
      error_message = "deliberate failure for the compat tests"
    }
  }
}
"""

# Creating the resource takes 45 s (a local-exec provisioner), so a deployment of it is still in
# its engine step when a test cancels it; if cancel did not stop it, it would end `succeeded`.
SLOW_PROGRAM = """\
resource "terraform_data" "slow" {
  input = "slow"
  provisioner "local-exec" {
    command = "sleep 45"
  }
}
output "val" {
  value = terraform_data.slow.output
}
"""

# deploy-demos' static-site program reads its URL from the `websiteUrl` stack output.
SITE_PROGRAM = """\
resource "terraform_data" "site" {
  input = "index.html"
}
output "websiteUrl" {
  value = "http://site.example.test/${terraform_data.site.output}"
}
"""


def _git_repo(files):
    """A fresh git repository on branch main holding `files` ({relative path: text}), committed;
    returns its directory."""
    d = tempfile.mkdtemp(prefix="tarmac-compat-repo-")
    for rel, text in files.items():
        path = Path(d) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=Test",
           "-c", "commit.gpgsign=false"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(git + args, cwd=d, check=True, capture_output=True)
    return d


def _repo_fixture(files):
    d = _git_repo(files)
    try:
        yield f"file://{d}"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def repo():
    """A git repository with the Terraform program in infra/ on branch main; yields its file:// URL."""
    yield from _repo_fixture({"infra/main.tf": PROGRAM})


@pytest.fixture(scope="module")
def failing_repo():
    """Like `repo`, but the program in infra/ fails to apply."""
    yield from _repo_fixture({"infra/main.tf": FAILING_PROGRAM})


@pytest.fixture(scope="module")
def slow_repo():
    """Like `repo`, but applying the program in infra/ takes 45 s."""
    yield from _repo_fixture({"infra/main.tf": SLOW_PROGRAM})


@pytest.fixture(scope="module")
def site_repo():
    """A repository with deploy-demos' static-site stand-in in site/ (output `websiteUrl`)."""
    yield from _repo_fixture({"site/main.tf": SITE_PROGRAM})
