"""Usage and money: cgroup counters sampled into the exit-exact ledger (SQLite), price sheets,
and bills computed from the ledger."""
