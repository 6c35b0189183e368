"""Peer: the same /data as a bare twisted.web Resource with deferToThreadPool on a dedicated pool.

    python twisted_web.py PORT --iterations N [--pool-size P] [--kind pbkdf2]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bare_server import main  # noqa: E402

if __name__ == "__main__":
    main()
