"""CheckpointOptions: how many checkpoints CheckpointManager keeps, and how it saves."""

import dataclasses

from train.errors import UsageError


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """keep: newest checkpoints kept. keep_every_hours: additionally keep one checkpoint
    per this many hours forever. async_save: save() returns after the snapshot."""

    keep: int = 3
    keep_every_hours: float | None = None
    async_save: bool = False

    def __post_init__(self):
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise UsageError(f"checkpoint keep must be an integer >= 1, got {self.keep!r}")
        hours = self.keep_every_hours
        if hours is not None and (
            isinstance(hours, bool) or not isinstance(hours, (int, float)) or not hours > 0
        ):
            raise UsageError(f"checkpoint keep_every_hours must be > 0 or None, got {hours!r}")
