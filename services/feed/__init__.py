"""The feed service: Massive WebSocket ingest, poll fallback, replay, tick journal, historical REST."""
