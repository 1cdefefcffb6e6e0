"""Suite-wide settings: one torch thread per test process.

``make test`` runs two pytest workers on a two-core machine; with torch's default of one
thread per core each, four threads would fight over two cores and the suite slows down several
times over (measured on the 2-core CI kind).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
