"""`paddle2ort serve`: an OpenAI-compatible HTTP server with in-flight batching (FastAPI + uvicorn; the `serve`
extra). Only this package imports fastapi/uvicorn/prometheus-client; the rest of the runtime never does."""
