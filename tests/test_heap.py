"""The server's heap at start-up (runtime/app.py settle_heap)."""

from __future__ import annotations

import gc

from config.settings import Settings
from runtime.app import settle_heap


def test_the_heap_is_frozen_at_start_up_and_full_collections_made_rarer():
    before = gc.get_threshold()
    try:
        settle_heap(Settings())
        assert gc.get_threshold() == (before[0], before[1], 100) and gc.get_freeze_count() > 0
        gc.unfreeze()
        settle_heap(Settings(gc_gen2_threshold=123))
        assert gc.get_threshold() == (before[0], before[1], 123) and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
