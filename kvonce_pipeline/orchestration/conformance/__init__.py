"""The CI graph: the four stage assets of one payload, made by one factory, and the job that runs them."""
