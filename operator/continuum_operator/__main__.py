"""``continuum-operator`` / ``python -m continuum_operator``: run the operator under kopf.

Equivalent to ``kopf run -m continuum_operator --standalone``, or with ``--peering NAME`` to
``kopf run -m continuum_operator --peering NAME`` (several replicas, one active); settings
come from ``CONTINUUM_OPERATOR_*`` environment variables (see ``settings.py``).
"""

from __future__ import annotations

import argparse
import sys

import kopf

from . import handlers  # noqa: F401  (registers the handlers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="continuum-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no -n is given)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="kopf liveness endpoint ('' disables)")
    parser.add_argument("--peering", metavar="NAME", default=None,
                        help="peer with the other replicas through this KopfPeering (or "
                             "ClusterKopfPeering with -A): one works, the others stand by")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON)
    kopf.run(standalone=args.peering is None, peering_name=args.peering,
             clusterwide=not args.namespace, namespaces=args.namespace,
             liveness_endpoint=args.liveness or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
