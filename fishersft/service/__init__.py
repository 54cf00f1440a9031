"""What the API (app/) and the workers (workers/) share, below both: settings, the artifact store, and the
keys they agree on in Redis."""
