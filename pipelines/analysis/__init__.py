"""Analysis: tables, statistics, the paper's claims, figures and verify."""
