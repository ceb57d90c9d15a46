"""Results: the SQLite store of every measurement, regression detection, and the reports
(HTML / Markdown / JSON / JUnit) rendered from the store.

    schema.py       the tables and their versioned migrations
    records.py      the typed rows: Run, Measurement, VerdictRecord
    store.py        ResultsStore: runs, measurements, verdicts (WAL, transactions, queries)
    record.py       a compile/bench summary -> a run and its measurements (begun at the start)
    recover.py      a killed run's finished jobs, recovered from its summary.json + bundle
    fingerprint.py  the environment a number was measured in, and its series hash
    detect.py       SLOWER / FASTER / SAME / UNKNOWN with effect size and confidence interval
    evaluate.py     judging a cell against its baseline (latency, accuracy, parity)
    report/         rendering the store into reports people read

Running a nightly matrix is an orchestrator's job: :mod:`edgeprune.flows.nightly`.
"""
