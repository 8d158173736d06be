"""mailgate's benchmark: mailgate and Postfix measured side by side, in the same run, as ratios.

Each run pits one system under test (SUT) against the same load: a load generator process
(:mod:`bench.loadgen`) sends messages over C concurrent SMTP connections from 127.0.0.100, the SUT
relays them to a capture sink process (:mod:`bench.sink`) on 127.0.0.50, and a sampler
(:mod:`bench.memory`) sums the PSS of every process of the SUT. :mod:`bench.run` drives it all and
:mod:`bench.report` turns the measurements into a Markdown table and a JSON file.

Run it with ``uv run python -m bench.run --help``.
"""
