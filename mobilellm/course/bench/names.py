"""The bench's suites, default configs and report files: names only, so the command line can list them
without importing torch."""

SUITES = ("train", "decode", "int8", "sharing", "pte")
ALL_SUITES = ("train", "decode", "int8", "sharing")  # what "all" runs: pte lowers 12 programs
SCHEMA_VERSION = 1
PTE_BENCH_JSON = "bench_pte_125m_2blocks.json"  # the committed pte report in data/results (notebook 11, README)
# The 125M's full depth, one committed report per format (each lowering run is most of an hour here)
PTE_FULL_BENCH_JSON = "bench_pte_125m_30blocks_{quant}.json"
# Above this many parameters a model is "big": smaller batches and fewer repeats.
BIG_PARAMS = 20_000_000
DEFAULT_CONFIGS = {
    "train": ("teach-micro", "mobilellm-125m"),
    "decode": ("teach-micro", "mobilellm-125m"),
    "int8": ("mobilellm-125m",),
    "sharing": ("mobilellm-125m",),
    "pte": ("mobilellm-125m",),
}
QUICK_CONFIGS = {s: ("teach-micro",) for s in SUITES}
