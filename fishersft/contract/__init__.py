"""The contract: the typed options and results of every job, shared by the HTTP API, the CLI and the workers.

Pydantic models, importable without torch. The API's request and response schemas are these models; the CLI
builds them from its flags; a worker validates them from the job's JSON; core functions take and return them.
Adding an option touches one definition here and the code that uses it."""
