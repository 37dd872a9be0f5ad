"""The trainer's streaming-metrics state as safetensors (stored in every version beside the weights)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from stream.metrics import StreamingMetrics


def metrics_blob(metrics: StreamingMetrics) -> bytes:
    state = metrics.state()
    compact: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("_bins"):  # 2^20 mostly-empty bins: keep only the occupied ones
            idx = np.flatnonzero(value)
            compact[f"{key}.index"], compact[f"{key}.count"] = idx.astype(np.int64), value[idx]
        else:
            compact[key] = np.ascontiguousarray(value)
    return np_save(compact, metadata={"window": str(metrics.window)})


def load_metrics(blob: bytes, window: int) -> StreamingMetrics:
    arrays = np_load(blob)
    metrics = StreamingMetrics(window)
    state = {k: v for k, v in arrays.items() if ".index" not in k and ".count" not in k}
    for key in ("pos_bins", "neg_bins"):
        full = np.zeros_like(metrics.state()[key])
        full[arrays[f"{key}.index"]] = arrays[f"{key}.count"]
        state[key] = full
    metrics.load_state(state)
    return metrics
