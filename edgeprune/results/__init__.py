"""Results: the SQLite store of every measurement, regression detection, the nightly
matrix runner and the reports (HTML / Markdown / JSON / JUnit) rendered from the store.

    store.py        ResultsStore: runs, measurements, verdicts (WAL, transactions, migrations)
    fingerprint.py  the environment a number was measured in, and its series hash
    detect.py       SLOWER / FASTER / SAME / UNKNOWN with effect size and confidence interval
    nightly.py      the matrix file, running it, baselines, verdicts, exit status
    report.py       rendering the store into reports people read
"""
