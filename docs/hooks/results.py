"""Mount the benchmark's committed reports and figures into the site as results/<name>/<file>.

They live in benchmarks/results/, where `make bench` and `make suite` write them; mounting them (instead of copying
them into docs/) keeps one copy that a new benchmark run updates, and lets strict mode check the links to them.
"""

from pathlib import Path

from mkdocs.structure.files import File, Files

# The result directories the site shows: the committed ones (README, "Benchmark"). Others under benchmarks/results/
# (a bench-quick install check, a suite still running) are left out so that a build does not depend on them.
RESULTS = (
    "bench",
    "scale",
    "validation",
    "test",
    "unseen",
    "prior_art",
    "transfer",
    "centrobind",
    "pool_size",
    "tuned_digit_views",
    "tune_digit_views",
    "sym_regimes",
    "weak_pivot",
)
SUFFIXES = (".md", ".png")


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).parent / "benchmarks" / "results"
    for name in RESULTS:
        for path in sorted((root / name).iterdir()):
            if path.suffix in SUFFIXES:
                files.append(File.generated(config, f"results/{name}/{path.name}", abs_src_path=str(path)))
    return files
