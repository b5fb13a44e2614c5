"""Runtime: reconcile (apply), control and, later, launch and the ledger."""
