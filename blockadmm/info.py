"""`python -m blockadmm.info` (also `blockadmm info`): versions, and which backends run here and why not."""
from __future__ import annotations

import os
import sys

import torch


def main() -> int:
    import numpy

    from . import __version__, ops

    print(f"blockadmm {__version__}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed (pip install 'blockadmm[triton]')")
    print(f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"{ops.BACKEND_ENV}={os.environ.get(ops.BACKEND_ENV, '') or '(unset: auto)'}")
    print("backends:")
    for name, b in ops.backends().items():
        err = b.load_error()
        state = "available" if err is None else f"unavailable: {err}"
        print(f"  {name:<7} on {'/'.join(b.devices):<20} {state}")
    print("auto order: " + "; ".join(f"{dev}: {' > '.join(order)}" for dev, order in ops.AUTO_ORDER.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
