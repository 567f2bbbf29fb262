"""Operations: metrics, the admin listener, logs."""
