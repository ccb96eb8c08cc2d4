"""The aiohttp edge: HTTP API, WebSocket bridge, health routes and the chat page."""
