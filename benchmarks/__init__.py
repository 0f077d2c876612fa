"""The experiment tooling, outside the library: suites of runs (``python -m benchmarks.suite``), the benchmark
(``benchmarks.bench``), its cost report (``benchmarks.cost``) and the aggregate of ``results.csv`` files
(``benchmarks.report``). They start runs through ``brokenbind.api`` and read the rows it returns; ``brokenbind``
imports nothing of them. Suite files live in ``benchmarks/suites``; the experiment files they name are found relative
to the working directory (a checkout) or to the suite file."""
