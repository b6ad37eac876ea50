"""``python -m compactcnn.cli``: what torchrun launches."""

import sys

from compactcnn.cli import main

sys.exit(main())
