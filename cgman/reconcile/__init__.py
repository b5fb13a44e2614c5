"""Make the cgroup tree match the policy: apply a plan with rollback, diff, prune, and status
(the live limits read back)."""
