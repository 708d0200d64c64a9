"""The benchmark suite: the generated service against what a team would otherwise
run, on 127.0.0.1, bounded in time. Run it with tests/bench.sh (not part of the
test run: pytest collects nothing here)."""
