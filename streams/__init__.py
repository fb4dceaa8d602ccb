"""The stream processor: admission, the response cache, routing, and completion."""
