"""The process: the supervisor, its workers, and what they know of their build."""
