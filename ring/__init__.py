"""Pure replication primitives: hybrid logical clock, merge rules; the hash ring comes with issue 4."""
