"""Hypothesis profiles of the property tests (tests/test_kernel_properties.py).

* "ci" (loaded by default): derandomized, so every run draws the same examples; 100
  examples per unit (each property multiplies this per backend, see EXAMPLES there).
* "thorough": 10x the examples, fresh random examples each run.

tests/conftest.py imports this module, so the names are registered before hypothesis'
pytest plugin applies ``--hypothesis-profile=NAME``; DVTP_HYPOTHESIS_PROFILE=NAME works
too. Without either, "ci" is loaded.
"""
import os

from hypothesis import HealthCheck, settings

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=100, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=_HEALTH,
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, database=None, print_blob=True,
    suppress_health_check=_HEALTH,
)

if os.environ.get("DVTP_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["DVTP_HYPOTHESIS_PROFILE"])
elif settings.get_current_profile_name() == "default":
    settings.load_profile("ci")
