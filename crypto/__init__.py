"""Ed25519 identities, signed envelopes, replay protection, grants, and the error hierarchy."""
