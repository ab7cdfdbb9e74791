"""Pure-torch sequence kernels in matmul/chunked form (fast on CPU, exact in fp32)."""

from .selective_scan import selective_scan
from .ssd import segsum, ssd_scan

__all__ = ["segsum", "selective_scan", "ssd_scan"]
