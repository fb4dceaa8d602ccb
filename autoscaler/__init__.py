"""The autoscaler: sizes each model's worker pool from its backlog in Kafka and its measured
service rate, exports the figure (KEDA reads it in a cluster) and, on the local stack,
starts and stops workers itself. A service: it imports the contracts and the client
library, no other service."""
