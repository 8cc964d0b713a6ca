"""Suite-wide settings: offline, and one torch thread.

Tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second thread
stalls every parallel region (tests went from minutes to seconds). The environment variables are
set before torch starts so subprocesses (DDP, benchmark workers) inherit them.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
