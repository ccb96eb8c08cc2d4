"""What crosses the wire: envelopes, payloads, records, events, errors, encode/decode."""
