"""fishersft HTTP API: thin glue from HTTP to jobs (RQ on Redis) and the artifact store."""
