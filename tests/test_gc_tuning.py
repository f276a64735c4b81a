"""
L{pyenvoy.gc_tuning}: what C{twistd pyenvoy} does to the garbage collector.
"""

from __future__ import annotations

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.gc_tuning import THRESHOLDS, tuneForServing


class TuneForServingTests(SynchronousTestCase):
    """
    Start-up objects are frozen and young collections made rarer, and
    cycles made afterwards are still collected.
    """

    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)

    def test_freezesAndRaisesThresholds(self) -> None:
        """
        Objects alive at the call are moved to the permanent generation;
        the thresholds are L{THRESHOLDS}, young one above CPython's 700.
        """
        survivor = [object()]
        tuneForServing()
        self.assertEqual(gc.get_threshold(), THRESHOLDS)
        self.assertGreater(THRESHOLDS[0], 700)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertFalse(any(o is survivor for o in gc.get_objects()))

    def test_laterCyclesCollected(self) -> None:
        """
        A reference cycle made after tuning is freed by the collector.
        """
        tuneForServing()

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node)
        del node
        gc.collect()
        self.assertIsNone(ref())
