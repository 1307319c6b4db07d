"""Outside proof of the daemon's reliability (issue 9): a fuzz and a soak that judge the daemon only by
PROTOCOL.md and its welcome. Run `python -m reliability --help`; results live in docs/RELIABILITY.md."""
