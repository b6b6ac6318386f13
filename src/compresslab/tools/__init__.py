"""Commands that work across experiments: search, compare, the registry, remote checks, throwaway project copies."""
