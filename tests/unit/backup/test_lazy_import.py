"""A node that never backs up to S3 never loads the S3 client."""

from __future__ import annotations

import subprocess
import sys


def test_the_node_and_the_cli_load_no_s3_client_until_an_s3_target_is_used() -> None:
    code = (
        "import sys\n"
        "from continuum.federation.distributed import node, cli\n"
        "from continuum.federation.distributed.backup import locations\n"
        "cli._parser(); locations.open_target('/tmp')\n"
        "print(any(m.split('.')[0] in ('aiobotocore', 'botocore') for m in sys.modules))\n"
        "locations.open_target('s3://bucket/prefix')\n"
        "print(any(m.split('.')[0] in ('aiobotocore', 'botocore') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]  # the S3 target imports its client on first use only
