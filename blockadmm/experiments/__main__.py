import sys

from . import run

raise SystemExit(run(sys.argv[1:]))
