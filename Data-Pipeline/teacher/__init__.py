"""Teacher capture: offline expert teacher, OpenAI-compatible client, local server, capture loop."""
