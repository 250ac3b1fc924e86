"""The WebSocket streaming recognition server and its browser demo page (`speechkit serve`)."""
