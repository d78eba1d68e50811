"""Stand-in for the expecttest package, which Debian 12 does not ship.

torch.testing._internal.common_utils imports it for its TestCase base class
and the ACCEPT flag (rewriting expected strings in test sources). The module
tests run here use neither feature, so a plain unittest.TestCase and
ACCEPT = False are all that is needed; assertExpectedInline fails loudly
rather than pass silently.
"""

import unittest

ACCEPT = False


class TestCase(unittest.TestCase):
    longMessage = True

    def assertExpectedInline(self, actual, expect, skip=0):  # noqa: N802 (unittest style)
        self.assertEqual(expect, actual)

    def assertExpectedRaisesInline(self, exc_type, callable, expect, *args, **kwargs):  # noqa: N802
        with self.assertRaises(exc_type) as ctx:
            callable(*args, **kwargs)
        self.assertEqual(expect, str(ctx.exception))
