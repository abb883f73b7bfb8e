"""Test-suite wide settings.

Hypothesis runs derandomized by default, so `make test` is the same run on
every machine and a CI failure reproduces locally; set
HYPOTHESIS_PROFILE=explore to search with fresh random examples (and the
example database) while developing.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
