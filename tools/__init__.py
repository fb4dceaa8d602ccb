"""llmq's tooling, apart from the product: the local stack runner (`llmq local`), topic
creation (`llmq topics`), the demo, the benchmarks (`llmq bench`, `python -m
tools.bench.<name>`) and the fault tests (`llmq faults`). It may import every other package;
none imports it. Its commands join the `llmq` command line through the `llmq.commands`
entry points (pyproject.toml)."""
