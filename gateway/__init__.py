"""The HTTP front door: OpenAI's chat-completions API over llmq's topics, for apps that speak
HTTP, not Kafka. It is an app of llmq: it imports the contracts and the client library
(llmq.aio), no other service."""
