"""`internvlu serve`: one local HTTP server for generation, editing, chain-of-thought and questions.

Layers: the server drives the CLI's `Session` (one model load, the same settings resolution and recipe writing),
so it sits above `internvlu.cli`; the command root (`internvlu.cli.app`) sits above both and registers `serve`.

- `command`: the `serve` command: checks, one model load, uvicorn, and the drain on Ctrl-C.
- `app`: the FastAPI application: key check, body limit, error shape, the web page, the routes below.
- `openai_routes`: `/v1/images/generations`, `/v1/images/edits`, `/v1/chat/completions`, `/v1/models`.
- `job_routes`: `/v1/jobs` (submit, poll, events, cancel) and `/v1/files/{id}`.
- `requests`: request bodies into work (fields, settings layers, images); `work`: that work run on the session.
- `jobs`: the bounded queue and its one worker thread; `events`: server-sent events; `errors`: OpenAI's error shape.
"""
