"""Alert delivery: payload formats, signatures, routing, the outbox and the dispatcher over real HTTP."""
