"""The drop folder: the partitioned graph, its sensor, and the cross-payload store asset."""
