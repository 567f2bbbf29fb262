"""Where traffic goes: backends, balancing, route table, discovery."""
