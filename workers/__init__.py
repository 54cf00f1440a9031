"""RQ workers: thin glue from a job to fishersft.pipeline."""
