"""The unit of data: one clip (a video of one episode / one camera / one SSv2 id)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Clip:
    """A clip as the pipeline stores it.

    frames:  uint8 [T, H, W, 3] (64x64 once transcoded)
    actions: float32 [T-1, A] or None; actions[t] is the action taken at frame t that led to frame t+1
    rewards: float32 [T-1] or None (reward received for actions[t])
    success: bool [T-1] or None (info["success"] after actions[t])
    hand:    float32 [T, 4] or None; the end effector at each frame, from the simulator's state: its xyz
             position (metres) and the gripper's opening (Meta-world's state[0:4]); what an action moves
    meta:    at least `source` and `id`; per source: task, variation, episode, camera, label, ...
    """

    frames: np.ndarray
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    success: np.ndarray | None = None
    hand: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipRef:
    """Where a clip comes from, before it is decoded: cheap to list, picklable for worker processes.

    `path` is the file or folder read (used in rejects), `meta` what is known without decoding.
    """

    source: str
    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class ClipRejected(Exception):
    """A clip that cannot be used; `reason` says why (recorded in rejects.parquet)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # picklable across worker processes despite the two-argument __init__
        return (ClipRejected, (self.path, self.reason))
