"""`llmq faults`: real workloads through a local stack while its parts are killed, stopped
or fed poison; every accepted request is counted against the replies it got."""
