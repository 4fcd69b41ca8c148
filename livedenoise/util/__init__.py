"""Small pieces shared across subpackages: atomic file writes, JSON helpers, resident memory."""
