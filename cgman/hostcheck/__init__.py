"""`cgman doctor`: what this host gives cgman, what it lacks, and the fix for each finding."""
