"""What cgman keeps on disk: the run dir's container records (checked as hostile before use),
the applied policy, and the O_NOFOLLOW directory walk both are read through."""
