"""train.checkpoint.retention: the newest are kept, and keep_every_hours across restarts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from checkpoint_helpers import (  # noqa: E402
    ckdir_fixture,  # noqa: E402, F401 (fixtures)
    manager,
    tiny_state,
)


def test_retention_keeps_the_newest(ckdir):
    state = tiny_state()
    with manager(ckdir, state, keep=2) as m:
        for step in range(1, 6):
            m.save(step * 10)
        assert m.all_steps() == [40, 50]
    assert sorted(os.listdir(ckdir)) == ["ckpt-00000040", "ckpt-00000050", "latest"]


def test_keep_every_hours_survives_restarts(ckdir):
    hours = iter([0.0, 0.5, 1.1, 1.5, 2.2, 2.5, 3.3])
    clock = lambda: next(hours) * 3600  # noqa: E731
    state = tiny_state()
    with manager(ckdir, state, keep=1, keep_every_hours=1, clock=clock) as m:
        for step in range(1, 6):
            m.save(step)
        # 1 starts the first window, 3 is >= 1 h after 1, 5 is >= 1 h after 3.
        assert m.all_steps() == [1, 3, 5]
    with manager(ckdir, state, keep=1, keep_every_hours=1, clock=clock) as m:
        m.save(6)  # 0.3 h after 5: only kept while newest
        m.save(7)  # 1.1 h after 5 (known from 5's manifest, not from memory)
        assert m.all_steps() == [1, 3, 5, 7]
