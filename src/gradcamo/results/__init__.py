"""Reading score datasets back: SQL queries and per-group summaries through DuckDB."""
