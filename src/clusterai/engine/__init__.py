"""The Dask engine: cluster start/connect, the worker plugin, and running batches on workers."""
