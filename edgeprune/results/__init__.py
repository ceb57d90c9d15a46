"""Results: the store of every measurement (a SQLite file, or a PostgreSQL database shared
by a lab), regression detection, and the reports (HTML / Markdown / JSON / JUnit) rendered
from the store.

    location.py     what --db names: a SQLite path, a postgresql:// URL (password hidden), or nothing
    schema.py       the tables and their versioned migrations (one definition for both engines)
    dialect.py      one connection in one SQL: every SQLite / PostgreSQL difference, in one place
    pg.py           connecting to PostgreSQL (psycopg 3), and one-line errors with a hint
    records.py      the typed rows: Run, Measurement, VerdictRecord
    store.py        ResultsStore: runs, measurements, verdicts (transactions, queries)
    migrate.py      copying a history into another database (results migrate), ids and links kept
    shards.py       the shards of one nightly run (--shard I/N on several runners), for one report
    record.py       a compile/bench summary -> a run and its measurements (begun at the start)
    recover.py      a killed run's finished jobs, recovered from its summary.json + bundle
    fingerprint.py  the environment a number was measured in, and its series hash
    detect.py       SLOWER / FASTER / SAME / UNKNOWN with effect size and confidence interval
    evaluate.py     judging a cell against its baseline (latency, accuracy, parity)
    report/         rendering the store into reports people read

Running a nightly matrix is an orchestrator's job: :mod:`edgeprune.flows.nightly`.
"""
