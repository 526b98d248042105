"""The benchmark helpers live in the package: `dvtp.bench.harness` (timing, peak memory,
records). Re-exported here for the scripts and tests that import ``benchmarks.common``."""
from dvtp.bench.harness import cpu_tensor_peak, environment, median_iqr, save_json, synchronize  # noqa: F401
