"""Every generic domain's asset group, the domain-neutral collected payload, the trace summary and their jobs."""
