"""Built-in AI and CPU workloads that ship with clusterai."""
