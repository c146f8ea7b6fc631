"""Alert delivery: receivers, payload formats, signing, the durable outbox and its delivery log."""
